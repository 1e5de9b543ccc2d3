"""Members = seeds x sweep, stable indices, and atomic writes that never leave a complete-looking file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from skinhpc.config import SpecError, from_dict, plan_members
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.io.layout import JobPaths


def test_seeds_times_grid_in_stable_order(tmp_path: Path) -> None:
    spec = from_dict({
        "name": "sw", "base_dir": str(tmp_path), "seeds": [1, 2, 3],
        "sweep": {"grid": {"train.weight_decay": [0.01, 0.05], "train.augment": [0.0, 0.5]}},
    })
    members = plan_members(spec)
    assert len(members) == 3 * 4
    assert [m.index for m in members] == list(range(12))
    assert [m.seed for m in members[:3]] == [1, 2, 3]
    points = {tuple(sorted(m.overrides.items())) for m in members}
    assert len(points) == 4
    # a member's spec carries its sweep point, the job's spec is untouched
    m = members[-1]
    ms = m.spec(spec)
    assert ms.train.weight_decay == m.overrides["train.weight_decay"]
    assert ms.train.augment == m.overrides["train.augment"]
    assert spec.train.weight_decay == 0.01
    assert plan_members(spec) == members  # deterministic


def test_random_sweep_log_uniform_and_seeded(tmp_path: Path) -> None:
    raw = {
        "name": "rs", "base_dir": str(tmp_path), "seeds": [7],
        "sweep": {"random": {"train.weight_decay": [1e-4, 1e-1], "train.batch_size": [16, 32]}, "count": 20},
    }
    a = plan_members(from_dict(raw))
    b = plan_members(from_dict(raw))
    assert a == b and len(a) == 20
    wds = [m.overrides["train.weight_decay"] for m in a]
    assert all(1e-4 <= w <= 1e-1 for w in wds)
    # log-uniform: a good share of the samples fall below the arithmetic 1 % point of the range
    assert sum(w < 1e-2 for w in wds) >= 6
    assert {m.overrides["train.batch_size"] for m in a} <= {16, 32}


def test_sweep_key_typo_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"sweep\.grid\.train\.weight_decai.*did you mean 'weight_decay'"):
        from_dict({"name": "x", "base_dir": str(tmp_path), "sweep": {"grid": {"train.weight_decai": [0.1]}}})


def test_sweep_value_of_wrong_type_is_refused_at_plan_time(tmp_path: Path) -> None:
    spec = from_dict({"name": "x", "base_dir": str(tmp_path), "sweep": {"grid": {"train.batch_size": [8, "big"]}}})
    with pytest.raises(SpecError, match=r"train\.batch_size: expected an integer, got 'big'"):
        plan_members(spec)


def test_member_folders(tmp_path: Path) -> None:
    paths = JobPaths(tmp_path / "job")
    assert paths.member(3).best == tmp_path / "job" / "members" / "003" / "best.pt"


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed")
    assert not target.exists()
    assert os.listdir(target.parent) == []
    write_json_atomic(target, {"ok": 1})
    assert target.read_text().strip().endswith("}")


def test_atomic_write_honours_umask(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    write_json_atomic(target, {})
    mode = target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
