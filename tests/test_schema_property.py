"""Random jobs, built by walking the schema: from_dict validates them or names the bad key.

Every field gets either a value of its own type (any size, sign or spelling) or junk of another
type, plus now and then a key the schema does not know. The only outcomes allowed are a JobSpec
or a SpecError whose message names a real key path, each within a deadline: never another
exception, never a hang. Seeded (derandomize) so a failure reproduces.
"""

from __future__ import annotations

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
        return st.integers(-3, 12) | st.integers()
    if tp is float:
        return st.floats(-2, 2) | st.floats()
    if tp is str:
        return st.from_regex(meta["pattern"], fullmatch=True) | st.text(max_size=20) if "pattern" in meta \
            else st.text(max_size=40)
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
    optional = {f.name: typed(types_[f.name], f.metadata) | JUNK for f in dataclasses.fields(cls)}
    known = st.fixed_dictionaries({}, optional=optional)
    unknown = st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in optional), JUNK, max_size=1)
    return st.tuples(known, st.one_of(st.just({}), st.just({}), unknown)).map(lambda t: {**t[1], **t[0]})


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
