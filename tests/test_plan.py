"""Members = sweep x folds x seeds (one planner, its length the count), each member spec validated
once; resources() per stage; atomic writes that never leave a complete-looking file."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from skinhpc.config import (
    JobSpec,
    SourceSpec,
    SpecError,
    dump_yaml,
    from_dict,
    member_at,
    member_count,
    plan_members,
    set_dotted,
    with_overrides,
)
from skinhpc.config import members as members_mod
from skinhpc.config.validate import NotReplaceable, replace_dotted
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.plan import resources


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
    # a stage's traceback: a member's beside its outputs, a job-level stage's in state/
    assert paths.stage_error("member-3") == paths.member(3).error == tmp_path / "job" / "members" / "003" / "error.txt"
    assert paths.stage_error("reduce") == tmp_path / "job" / "state" / "reduce.error.txt"


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


def test_kfold_members_count_for_min_members(tmp_path: Path) -> None:
    """One seed, three folds: three members, so min_members=2 is allowed (the count is the plan's
    length, folds included) and 4 is refused naming the count."""
    raw = {"name": "x", "base_dir": str(tmp_path), "seeds": [42],
           "data": {"split": {"method": "kfold", "folds": 3}}, "reduce": {"min_members": 2}}
    spec = from_dict(raw)
    assert [(m.fold, m.seed) for m in plan_members(spec)] == [(0, 42), (1, 42), (2, 42)]
    assert member_count(spec) == len(plan_members(spec)) == 3
    raw["reduce"]["min_members"] = 4
    with pytest.raises(SpecError, match=r"reduce\.min_members: 4 is more than the 3 member\(s\)"):
        from_dict(raw)


def test_each_member_spec_validated_once_per_job(tmp_path: Path, monkeypatch) -> None:
    """Planning again (checks, plan, dry run) builds no member spec twice; a task builds only its own."""
    built: list[dict] = []
    real = members_mod.with_overrides
    monkeypatch.setattr(members_mod, "with_overrides", lambda job, values: built.append(values) or real(job, values))
    spec = from_dict({"name": "x", "base_dir": str(tmp_path), "seeds": [1, 2, 3],
                      "sweep": {"grid": {"train.weight_decay": [0.0, 0.1]}}})
    for _ in range(3):
        plan_members(spec)
    assert len(built) == 2  # one per distinct member spec (seeds share theirs), not 6 x 3
    other = from_dict({"name": "x", "base_dir": str(tmp_path), "seeds": [1, 2, 3],
                       "sweep": {"grid": {"train.weight_decay": [0.0, 0.1]}}})
    assert member_at(other, 4).spec(other).train.weight_decay == 0.1 and len(built) == 3


def _resource_spec(tmp_path: Path, **cluster) -> JobSpec:
    return from_dict({"name": "r", "base_dir": str(tmp_path), "cluster": cluster})


def test_resources_per_stage(tmp_path: Path) -> None:
    """resources(): GPUs in the site's form, per-stage overrides over cluster-wide settings, sbatch
    lines merged (dash and underscore one key), requeue for train and reduce only."""
    spec = _resource_spec(tmp_path, gpus_per_member=2, gpu_type="a100", gpu_request="gres", cpus_per_gpu=4,
                          mem_gb=32, time_min=120, partition="gpu", account="lab",
                          sbatch={"mail-type": "END"},
                          stages={"prepare": {"partition": "cpu", "cpus": 3},
                                  "reduce": {"time_min": 30, "sbatch": {"mail_type": "FAIL"}}})
    train, prepare, reduce = (resources(spec, s) for s in ("train", "prepare", "reduce"))
    assert train["slurm_gres"] == "gpu:a100:2" and train["cpus_per_task"] == 8 and train["mem_gb"] == 32
    assert train["timeout_min"] == 120 and train["slurm_partition"] == "gpu" and train["slurm_account"] == "lab"
    assert train["slurm_additional_parameters"] == {"requeue": True, "mail_type": "END"}
    assert train["name"] == "skinhpc-r-train" and "slurm_array_parallelism" in train
    assert "slurm_gres" not in prepare and prepare["cpus_per_task"] == 3 and prepare["slurm_partition"] == "cpu"
    assert prepare["slurm_additional_parameters"] == {"mail_type": "END"}  # never requeued
    assert reduce["slurm_gres"] == "gpu:a100:1" and reduce["timeout_min"] == 30 and reduce["cpus_per_task"] == 4
    assert reduce["slurm_additional_parameters"] == {"requeue": True, "mail_type": "FAIL"}
    plain = resources(_resource_spec(tmp_path, gpus_per_member=1, gpu_request="gpus-per-node"), "train")
    assert plain["slurm_gpus_per_node"] == 1 and "slurm_gres" not in plain
    assert "slurm_gpus_per_node" not in resources(_resource_spec(tmp_path, gpus_per_member=1, gpu_request="none"), "train")


def _leaves(node: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, object]]:
    out = []
    for k, v in node.items():
        out += _leaves(v, prefix + (k,)) if isinstance(v, dict) and v else [(".".join(prefix + (k,)), v)]
    return out


def test_member_spec_by_replacement_equals_a_full_rebuild(tmp_path: Path) -> None:
    """A member spec replaces only its keys (each checked by the schema's own per-key check) and runs
    the cross-field rules once; for every key of the schema and a spread of good and bad values it is
    the spec, or the error, that rebuilding the whole job from plain data gives."""
    spec = from_dict({"name": "x", "base_dir": str(tmp_path), "seeds": [1, 2],
                      "sweep": {"grid": {"train.weight_decay": [0.1]}}})
    cases = [(key, value) for key, default in _leaves(spec.to_dict())
             for value in (default, -1, 0, 1.5, "x", None, True, [], [1], {"a": 1}, float("nan"))]
    cases += [("train.phases.1.lr", 0.5), ("train.phases.0", {"epochs": 2}), ("seeds.0", 7), ("data.split.fold", 1)]
    replaced = 0
    for key, value in cases:
        raw = spec.to_dict()
        set_dotted(raw, key.split("."), value)
        try:
            want: object = from_dict(raw).to_dict()
        except SpecError as e:
            want = str(e).split(": ", 1)[1]
        try:
            got: object = replace_dotted(spec, {key: value}).to_dict()
        except SpecError as e:
            got = str(e)
        except NotReplaceable:
            continue
        replaced += 1
        assert got == want, (key, value)
    assert replaced > 0.95 * len(cases)
    member = plan_members(spec)[0].spec(spec)
    assert member.train.weight_decay == 0.1 and member.data is spec.data  # untouched sections shared
    with pytest.raises(SpecError, match=r"^job x with .*: train\.weight_decay: must be >= 0"):
        with_overrides(spec, {"train.weight_decay": -1.0})


def test_member_count_is_the_plans_length(tmp_path: Path) -> None:
    """member_count (asked by every member spec's cross-field check) counts without enumerating;
    it must stay the length of the one enumeration for grids, random draws, both, and folds."""
    sweeps = [{}, {"grid": {"train.weight_decay": [0.0, 0.1, 0.2], "train.batch_size": [8, 16]}},
              {"random": {"train.weight_decay": [0.001, 0.1]}, "count": 4},
              {"grid": {"train.batch_size": [8, 16]}, "random": {"train.ema.decay": [0.9, 0.99]}, "count": 3}]
    for sweep in sweeps:
        for split in ({}, {"method": "kfold", "folds": 3}):
            spec = from_dict({"name": "x", "base_dir": str(tmp_path), "seeds": [1, 2],
                              "sweep": sweep, "data": {"split": split}})
            assert member_count(spec) == len(plan_members(spec)), (sweep, split)


def test_schema_sections_copy_without_init_and_dump_as_asdict(tmp_path: Path) -> None:
    """A member spec copies its sections without running ``__init__`` (``_replaced``), and
    job.yaml is dumped from a plain walk instead of ``asdict``: both hold only while no schema
    class needs its ``__init__`` (a ``__post_init__``, an init-only field) and the walk gives
    asdict's mapping."""
    seen, todo = set(), [JobSpec, SourceSpec]  # every class reachable from the job's defaults
    while todo:
        cls = todo.pop()
        seen.add(cls)
        assert not hasattr(cls, "__post_init__") and all(f.init for f in dataclasses.fields(cls)), cls
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for value in default if isinstance(default, list) else [default]:
                if dataclasses.is_dataclass(value) and type(value) not in seen:
                    todo.append(type(value))
    assert len(seen) > 10
    spec = with_overrides(from_dict({"name": "x", "base_dir": str(tmp_path), "data": {"sources": [
        {"kind": "ham10000", "root": "d"}]}}), {"train.weight_decay": 0.5})
    assert yaml.safe_load(dump_yaml(spec)) == spec.to_dict()
