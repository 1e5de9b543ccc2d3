"""A member is done only while its best.pt is its own readable checkpoint (issue 21, item 12).

A best.pt copied in from another member, or truncated, used to read as "done" in status and at
relaunch (done.json alone was asked), while the reduce refused it: status, relaunch and reduce
now make the one check of :func:`skinhpc.io.checkpoint.member_checkpoint_problem`, from a stat
while best.pt is the file done.json stamped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skinhpc.config import plan_members
from skinhpc.ensemble.inference import gather_members
from skinhpc.io.state import done_members, member_done_problem
from skinhpc.orchestrate.plan import plan_submission
from skinhpc.train.member import train_member

pytestmark = pytest.mark.faults
PY = sys.executable

FAST_TRAIN = {"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}], "max_steps_per_epoch": 2,
              "batch_size": 16, "num_workers": 0}


def _status_members(root: Path) -> dict[str, str]:
    r = subprocess.run([PY, "-m", "skinhpc.cli", "status", str(root), "--json"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    doc = json.loads(r.stdout)
    return {row["stage"]: row["state"] for row in doc["stages"] if row["stage"].startswith("member")}


def test_foreign_or_truncated_best_is_not_done_and_retrains(tmp_path: Path, ham_root: Path,
                                                            prepared_tiny_job) -> None:
    spec, paths = prepared_tiny_job(tmp_path, ham_root, subset=120, seeds=[1, 2],
                                    model={"name": "small_cnn", "pretrained": "none"}, train=FAST_TRAIN)
    members = plan_members(spec)
    for m in members:
        train_member(spec, paths, m)
    assert done_members(spec, paths, members) == {0, 1}
    assert set(_status_members(paths.root).values()) == {"done"}
    mp0, mp1 = paths.member(0), paths.member(1)
    kept = {p: p.read_bytes() for p in (mp0.best, mp0.done, mp0.last, mp1.done, mp1.last)}

    # fault 1: member 0's best.pt copied over member 1's (loads, right architecture, foreign)
    foreign = mp0.best.read_bytes()
    shutil.copy(mp0.best, mp1.best)
    assert done_members(spec, paths, members) == {0}
    assert "seed is 1, this member's is 2" in (member_done_problem(spec, paths, members[1]) or "")
    states = _status_members(paths.root)
    assert list(states.values()).count("done") == 1, states
    assert [m.index for m in plan_submission(spec, paths).todo] == [1]  # the relaunch retrains it
    assert [m.member.index for m in gather_members(spec, paths)[1]] == [1]  # the reduce agrees

    # fault 2: member 0's best.pt truncated to half
    mp0.best.write_bytes(foreign[: len(foreign) // 2])
    assert "unreadable checkpoint" in (member_done_problem(spec, paths, members[0]) or "")
    assert done_members(spec, paths, members) == set()
    mp0.best.write_bytes(foreign)  # restored (same bytes, new ctime): judged from its meta again
    assert member_done_problem(spec, paths, members[0]) is None

    # the relaunch of member 1 trains it again; its rejected folder is kept aside, byte for byte
    train_member(spec, paths, members[1])
    assert done_members(spec, paths, members) == {0, 1}
    aside = [p for p in paths.members_dir.iterdir() if p.name.startswith(f"{mp1.root.name}.rejected-")]
    assert len(aside) == 1
    assert (aside[0] / "best.pt").read_bytes() == foreign
    assert (aside[0] / "done.json").read_bytes() == kept[mp1.done]
    assert (aside[0] / "last.pt").read_bytes() == kept[mp1.last]
    for p in (mp0.best, mp0.done, mp0.last):  # member 0: nothing rewritten by status or relaunch
        assert p.read_bytes() == kept[p], p


def test_done_check_of_untouched_members_needs_no_torch(tmp_path: Path, ham_root: Path,
                                                        prepared_tiny_job) -> None:
    """The cheap path: done.json's stamp of best.pt matches, so no checkpoint is read (and torch,
    seconds to import, stays out of the status/launch process)."""
    spec, paths = prepared_tiny_job(tmp_path, ham_root, subset=120, seeds=[1],
                                    model={"name": "small_cnn", "pretrained": "none"}, train=FAST_TRAIN)
    train_member(spec, paths, plan_members(spec)[0])
    code = ("import sys; from skinhpc.config import load_spec, plan_members; from skinhpc.io.layout import JobPaths;"
            "from skinhpc.io.state import done_members; p = JobPaths(sys.argv[1]); s = load_spec(p.job_yaml);"
            "print(sorted(done_members(s, p, plan_members(s))), 'torch' in sys.modules)")
    r = subprocess.run([PY, "-c", code, str(paths.root)], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["[0]", "False"], r.stderr
    os.utime(paths.member(0).best)  # touched: the stamp differs, the meta is read (torch) and still ok
    r = subprocess.run([PY, "-c", code, str(paths.root)], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["[0]", "True"], r.stderr
