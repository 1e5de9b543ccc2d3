"""Every fingerprint follows the identity each schema field declares, and old ones still match.

The walk covers every leaf key of the schema (list items included): changing a key outside an
identity keeps that fingerprint, changing one inside changes it. A key the walk cannot change to
another valid value fails the test, so a new field cannot slip through unchecked.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin

import pytest

from skinhpc.config import (
    TTA_VIEWS,
    JobSpec,
    SpecError,
    changed_keys,
    from_dict,
    identity_view,
    leaf_identities,
    with_overrides,
)
from skinhpc.config.identity import field_identity
from skinhpc.config.validate import hints
from skinhpc.data.prepare import data_hash
from skinhpc.model.net import member_fingerprint

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def base_spec() -> JobSpec:
    """Defaults almost everywhere; three seeds (reduce.min_members can grow), a class order
    (data.task can become multiclass), metadata fusion (its images_per_patient can be set) and
    no turning TTA view (preprocess.aspect can leave 1)."""
    return from_dict({"name": "t", "base_dir": "/srv/jobs", "seeds": [1, 2, 3],
                      "data": {"sources": [{"kind": "ham10000", "root": "/srv/data/ham10000"}],
                               "classes": CLASSES},
                      "model": {"metadata": {"enabled": True}},
                      "reduce": {"tta": ["identity", "hflip", "vflip", "hvflip", "crop95", "pad05"]}})


def leaves(obj: Any, prefix: str = "", inherited: str = "job") -> list[tuple[str, Any, Any, dataclasses.Field, str]]:
    """(dotted key, value, type, field, identity) for every leaf, list items by index."""
    out = []
    types_ = hints(type(obj))
    for f in dataclasses.fields(obj):
        ident = field_identity(f, inherited)
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out += leaves(value, key + ".", ident)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                out += leaves(item, f"{key}.{i}.", ident)
        else:
            out.append((key, value, types_[f.name], f, ident))
    return out


def candidates(value: Any, tp: Any, meta: Any) -> list[Any]:
    """Other values of the right type, in preference order (bounds are left to the validation)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = next(a for a in get_args(tp) if a is not type(None))
        return candidates(value, inner, meta) if value is not None else candidates(None, inner, meta) + [None]
    if origin is Literal:
        return [a for a in get_args(tp) if a != value]
    if tp is bool:
        return [not value]
    if tp is int:
        base = 1 if value is None else value
        return [base + 1, base - 1, base + 2, 1, 8]
    if tp is float:
        base = 0.5 if value is None else value
        return [base / 2, base * 2, base + 0.1, 0.5, 0.1, 3.0]
    if tp is str:
        return ["x"] if value is None else [value + "x", "x"]
    if origin is list:
        if "choices" in meta:
            return [value[:1] if len(value) > 1 else list(meta["choices"][:2])]
        (item,) = get_args(tp)
        if item is float:
            return [[0.6, 0.2, 0.2], [1.0, 2.0]]
        if item is int:
            return [value + [max(value, default=0) + 1]]
        return [value + ["x"]]
    if origin is dict:
        return [{"train.augment": [0.1, 0.2]}, {"mail-type": "END"}]
    raise AssertionError(f"no candidate values for {tp}")


def changed(spec: JobSpec, key: str, value: Any, tp: Any, meta: Any) -> tuple[JobSpec, Any]:
    for new in candidates(value, tp, meta):
        if new == value:
            continue
        try:
            return with_overrides(spec, {key: new}), new
        except SpecError:
            continue
    raise AssertionError(f"{key}: found no other valid value to test it with")


def fingerprints(spec: JobSpec) -> dict[str, str]:
    return {"job": spec.fingerprint(), "member": member_fingerprint(spec), "cache": spec.preprocess_hash()}


def test_every_field_changes_exactly_the_fingerprints_of_its_identity() -> None:
    spec = base_spec()
    before = fingerprints(spec)
    rows = leaves(spec)
    assert len(rows) > 100
    for key, value, tp, f, ident in rows:
        other, new = changed(spec, key, value, tp, f.metadata)
        after = fingerprints(other)
        inside = {"cache": {"cache", "member", "job"}, "member": {"member", "job"},
                  "job": {"job"}, "none": set()}[ident]
        for level in ("cache", "member", "job"):
            moved = after[level] != before[level]
            assert moved == (level in inside), (
                f"{key} ({ident}) set to {new!r}: {level} fingerprint {'changed' if moved else 'kept'}")


def test_declared_identities_of_the_keys_that_matter() -> None:
    table = leaf_identities(base_spec())
    expect = {
        "name": "none", "results_dir": "none", "base_dir": "none", "seeds": "job",
        "preprocess.size": "cache", "preprocess.hair.method": "cache", "preprocess.on_bad_image": "member",
        "preprocess.cache_dir": "none", "preprocess.workers": "none", "preprocess.shards": "none",
        "train.batch_size": "member", "train.eval_batch_size": "none", "train.num_workers": "none",
        "model.name": "member", "data.task": "member", "sweep.grid": "job", "reduce.gate": "job",
        "reduce.mlflow.tracking_uri": "none", "cluster.time_min": "none", "cluster.sbatch": "none",
    }
    assert {k: table[k] for k in expect} == expect
    assert {k for k, v in table.items() if v == "cache"} <= {k for k in table if k.startswith("preprocess.")}


def test_eval_batch_size_relaunch_keeps_the_job() -> None:
    """The disagreement this replaced: the job fingerprint kept eval_batch_size while the member
    fingerprint dropped it, so a relaunch refused a folder whose members were valid."""
    spec = base_spec()
    other = with_overrides(spec, {"train.eval_batch_size": 7, "train.num_workers": 5, "cluster.executor": "slurm",
                                  "results_dir": "/elsewhere"})
    assert other.fingerprint() == spec.fingerprint() and changed_keys(spec, other) == []
    gate = with_overrides(spec, {"reduce.gate": 0.5})
    assert changed_keys(spec, gate) == ["reduce.gate"] and member_fingerprint(gate) == member_fingerprint(spec)


@pytest.mark.parametrize(("raw", "member", "cache", "data"), [
    # values computed by the hand-kept lists this module replaced (commit 7290dc7): checkpoints
    # and cache folders written before must still be recognised
    ({"name": "d", "base_dir": "/srv/jobs", "data": {"sources": [{"kind": "ham10000", "root": "/srv/data/ham10000"}]}},
     "2d3af5132093c798", "7578eb01b36a", "58d7c0f3304880d3"),
    ({"name": "c", "base_dir": "/srv/jobs", "seeds": [1, 2],
      "data": {"sources": [{"kind": "ham10000", "root": "/srv/data/ham10000", "images": ["images"]}],
               "task": "multiclass", "classes": CLASSES, "subset": 240},
      "preprocess": {"size": 48, "hair": {"method": "telea"}, "color_constancy": {"enabled": True}, "on_bad_image": "skip"},
      "model": {"name": "resnet10t", "pretrained": "none", "metadata": {"enabled": True}},
      "train": {"phases": [{"name": "all", "epochs": 2, "train": "all", "lr": 3e-3}], "eval_batch_size": 16,
                "ema": {"enabled": True}},
      "reduce": {"tta": ["identity"]}},
     "b60940448c841b4f", "4b9d5da571dd", "33c1715783c65916"),
])
def test_existing_fingerprints_keep_their_values(raw: dict, member: str, cache: str, data: str) -> None:
    spec = from_dict(raw)
    assert (member_fingerprint(spec), spec.preprocess_hash(), data_hash(spec)) == (member, cache, data)


def test_member_view_is_the_training_sections() -> None:
    view = identity_view(base_spec(), "member")
    assert set(view) == {"data", "preprocess", "model", "train"}
    assert "eval_batch_size" not in view["train"] and "workers" not in view["preprocess"]


def test_tta_choices_are_the_views_the_reduce_implements() -> None:
    from skinhpc.ensemble.tta import VIEWS

    assert tuple(VIEWS) == TTA_VIEWS


def test_images_per_patient_at_its_default_keeps_old_fingerprints_and_counts_when_on() -> None:
    """model.metadata.images_per_patient came after the pinned fingerprints (omit_default): off,
    it is not in any view; on, it moves the member fingerprint and is named as changed."""
    spec = base_spec()
    assert "images_per_patient" not in identity_view(spec, "member")["model"]["metadata"]
    on = with_overrides(spec, {"model.metadata.images_per_patient": True})
    assert member_fingerprint(on) != member_fingerprint(spec)
    assert changed_keys(spec, on) == ["model.metadata.images_per_patient"]
    with pytest.raises(SpecError, match="model.metadata.images_per_patient: .*enabled"):
        with_overrides(spec, {"model.metadata.enabled": False, "model.metadata.images_per_patient": True})
