"""Random jobs, built by walking the schema: from_dict validates them or names the bad key.

Every field gets either a value of its own type (any size, sign or spelling) or junk of another
type, plus now and then a key the schema does not know. The only outcomes allowed are a JobSpec
or a SpecError whose message names a real key path, each within a deadline: never another
exception, never a hang. Seeded (derandomize) so a failure reproduces.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skinhpc.config import JobSpec, SpecError, from_dict
from skinhpc.config.validate import hints

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
SWEEP_KEYS = st.sampled_from(["train.weight_decay", "train.phases.0.lr", "train.augment", "seeds", "model.nam",
                              "reduce.gate", "data.split.seed"]) | st.text(max_size=20)


def typed(tp: Any, meta: Any) -> st.SearchStrategy:
    """Values of type ``tp`` (out of bounds as often as not); a section recurses."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return st.one_of(*(typed(a, meta) for a in get_args(tp)))
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(get_args(tp)) | st.text(max_size=12)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.one_of(*[st.integers(0, 12)] * 6, st.integers())
    if tp is float:
        return st.one_of(*[st.floats(0, 1, exclude_min=True, exclude_max=True)] * 6, st.floats())
    if tp is str:
        return st.one_of(*[st.from_regex(meta["pattern"], fullmatch=True)] * 6, st.text(max_size=20)) \
            if "pattern" in meta else st.text(max_size=40)
    if origin is list:
        (item,) = get_args(tp)
        items = st.sampled_from(meta["choices"]) | st.text(max_size=8) if "choices" in meta else typed(item, {})
        return st.lists(items, max_size=4)
    if origin is dict:
        return st.dictionaries(SWEEP_KEYS, st.lists(JUNK, max_size=3), max_size=2)
    if tp is Any:
        return JUNK
    if dataclasses.is_dataclass(tp):
        return section(tp)
    raise AssertionError(f"no strategy for {tp}")


def section(cls: type) -> st.SearchStrategy:
    """A mapping for schema class ``cls``: any subset of its keys, sometimes an unknown one."""
    types_ = hints(cls)
    # mostly well-typed values (so whole valid jobs occur too), now and then junk
    optional = {f.name: st.one_of(*[typed(types_[f.name], f.metadata)] * 6, JUNK) for f in dataclasses.fields(cls)}
    known = st.fixed_dictionaries({}, optional=optional)
    unknown = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in optional), JUNK, max_size=1)
    return st.tuples(known, st.one_of(*[st.just({})] * 6, unknown)).map(lambda t: {**t[1], **t[0]})


def names_a_key(key: str, raw: dict) -> bool:
    """The key starts at a schema key or at a key the input really has (an unknown one)."""
    tops = set(hints(JobSpec)) | {str(k) for k in raw}
    return any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in tops)


@pytest.mark.timeout(120)
@settings(max_examples=120, derandomize=True, deadline=1000, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=section(JobSpec))
def test_random_jobs_validate_or_name_the_key(raw: dict) -> None:
    try:
        spec = from_dict(raw)
    except SpecError as e:
        msg = str(e)
        assert e.key, msg
        assert e.key in msg and names_a_key(e.key, raw), msg
        assert len(msg) < 1000, msg  # quoted values are cut, whatever the input
    else:
        assert isinstance(spec, JobSpec) and spec.name == raw["name"]


def leaf_fields(cls: type, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(path, type, metadata) of every leaf key; list items of sections at index 0."""
    out = []
    for f in dataclasses.fields(cls):
        tp, path = hints(cls)[f.name], prefix + (f.name,)
        if dataclasses.is_dataclass(tp):
            out += leaf_fields(tp, path)
        elif get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
            out += leaf_fields(get_args(tp)[0], path + ("0",))
        else:
            out.append((path, tp, f.metadata))
    return out


LEAVES = leaf_fields(JobSpec)
VALID = {"name": "t", "seeds": [1, 2], "data": {"sources": [{"kind": "ham10000", "root": "/data/ham"}]},
         "train": {"phases": [{"name": "all"}]}}


def with_value(path: tuple[str, ...], value: Any) -> dict:
    raw = copy.deepcopy(VALID)
    node: Any = raw
    for k in path[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    node[path[-1]] = value
    return raw


@pytest.mark.timeout(120)
@settings(max_examples=200, derandomize=True, deadline=1000, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(change=st.sampled_from(LEAVES).flatmap(
    lambda leaf: st.tuples(st.just(leaf[0]), st.one_of(*[typed(leaf[1], leaf[2])] * 3, JUNK))))
def test_one_random_value_in_a_valid_job(change: tuple[tuple[str, ...], Any]) -> None:
    """Every leaf of the schema, one at a time, in an otherwise valid job: accepted, or refused
    naming that key (or, for a cross-field rule, another real key)."""
    path, value = change
    raw = with_value(path, value)
    from_dict(VALID)
    try:
        from_dict(raw)
    except SpecError as e:
        assert e.key and e.key in str(e) and names_a_key(e.key, raw), str(e)
        assert len(str(e)) < 1000, str(e)
