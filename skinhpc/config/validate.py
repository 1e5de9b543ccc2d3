"""Building a JobSpec from plain data and checking it: types, declared bounds, cross-field rules.

Pure: nothing here reads the disk or imports a heavy package, so a spec validates the same on
a laptop without the data, inside a test, and on the login node. Whether the data folders,
weights file and timm model exist is the launch's business (``skinhpc.orchestrate.checks``).
Every error is a SpecError whose message starts with the dotted key (``key`` holds it too), so
the loader can prefix the file the key came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from skinhpc.config.member_grid import grid_size
from skinhpc.config.schema import CHECKPOINT_SIGNAL_MARGIN_S, JobSpec, SpecError

SHOWN_CHARS = 80  # values quoted in error messages are cut to this many characters


def show(value: Any) -> str:
    """``repr(value)`` cut to SHOWN_CHARS (an error must not echo a megabyte of YAML)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _fail(key: str, msg: str) -> SpecError:
    return SpecError(f"{key or 'job'}: {msg}", key=key)


def closest(key: str, options: list[str]) -> str:
    m = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{m[0]}'?" if m else f"; valid keys: {', '.join(sorted(options))}"


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


@functools.cache
def hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a schema class: evaluated once, not at every load (launch time)."""
    return typing.get_type_hints(cls)


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against ``tp`` and build nested dataclasses; errors name ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except SpecError:
                pass
        raise _fail(where, f"expected {type_name(tp)}, got {show(value)}")
    if origin is Literal:
        if isinstance(value, bool) or value not in get_args(tp):
            options = [str(a) for a in get_args(tp)]
            hint = difflib.get_close_matches(str(value)[:SHOWN_CHARS], options, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise _fail(where, f"expected one of {type_name(tp)}, got {show(value)}{extra}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise _fail(where, f"expected {type_name(tp)}, got {type(value).__name__} {show(value)}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, f"expected a mapping, got {type(value).__name__} {show(value)}")
        _, vt = get_args(tp)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise _fail(where, f"expected true or false, got {show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, f"expected an integer, got {show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, f"expected a number, got {show(value)}")
        try:
            return float(value)
        except OverflowError:  # an int beyond a float's range
            raise _fail(where, f"number out of range: {show(value)}") from None
    if tp is str:
        if not isinstance(value, str):
            raise _fail(where, f"expected a string, got {show(value)}")
        return value
    raise _fail(where, f"unsupported type {tp}")  # pragma: no cover - schema bug


def build(cls: type, value: Any, where: str = "") -> Any:
    """An instance of schema class ``cls`` from a mapping: types checked, bounds enforced."""
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {type(value).__name__} {show(value)}")
    types_ = hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, v in value.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            cut = str(key)[:SHOWN_CHARS]
            raise _fail(f"{where}.{cut}" if where else cut, f"unknown key{closest(cut, list(fields))}")
        kwargs[key] = build_field(fields[key], types_[key], v, path)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(f"{where}.{name}" if where else name, "required key is missing")
    return cls(**kwargs)


def build_field(f: dataclasses.Field, tp: Any, value: Any, path: str) -> Any:
    """One key of a schema class from plain data: its type checked (nested classes built), its
    declared bounds enforced. :func:`build` calls it for every key, :func:`replace_dotted` for
    the keys it replaces only."""
    converted = _convert(value, tp, path)
    check_bounds(f, converted, path)
    return converted


class NotReplaceable(Exception):
    """A dotted key :func:`replace_dotted` does not walk (into a mapping-valued key, past a
    null section, an unknown key or index): the caller rebuilds the whole spec instead."""


def _replace_at(obj: Any, keys: list[str], value: Any, where: str) -> Any:
    """``obj`` (a schema class instance) with the dotted ``keys`` below it set to ``value``:
    the replaced key validated by :func:`build_field`, every other section shared, not copied."""
    cls = type(obj)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    key = keys[0]
    if key not in fields:
        raise NotReplaceable(key)
    path = f"{where}.{key}" if where else key
    tp = hints(cls)[key]
    if len(keys) == 1:
        return dataclasses.replace(obj, **{key: build_field(fields[key], tp, value, path)})
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
        return dataclasses.replace(obj, **{key: _replace_at(current, keys[1:], value, path)})
    if not (isinstance(current, list) and keys[1].isdigit() and int(keys[1]) < len(current)):
        raise NotReplaceable(key)
    items, i = list(current), int(keys[1])
    if len(keys) == 2:  # a whole item: the list is checked again as one key (its bounds are the list's)
        items[i] = value
        plain = [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else x for x in items]
        return dataclasses.replace(obj, **{key: build_field(fields[key], tp, plain, path)})
    if not dataclasses.is_dataclass(items[i]):
        raise NotReplaceable(key)
    items[i] = _replace_at(items[i], keys[2:], value, f"{path}[{i}]")
    return dataclasses.replace(obj, **{key: items})


def replace_dotted(spec: JobSpec, values: dict[str, Any]) -> JobSpec:
    """``spec`` with dotted keys replaced (a sweep point, a fold), validated: each replaced key
    by its own type and bounds (:func:`build_field`, as a full build would), then the
    cross-field rules (:func:`validate`) once. Unchanged sections are shared with ``spec``
    (specs are not mutated once validated), so a member spec costs its keys, not the schema.
    Raises SpecError, or NotReplaceable where only a full rebuild can apply the key."""
    out = spec
    for key, value in values.items():
        out = _replace_at(out, key.split("."), value, "")
    validate(out)
    return out


def build_spec(raw: Any) -> JobSpec:
    """A JobSpec from a plain mapping with every single-key check applied (no cross-field rules)."""
    return build(JobSpec, raw, "")


def check_bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    """The bounds declared in ``f``'s metadata; numeric bounds and choices hold for each list item."""
    m = f.metadata
    if value is None:
        return
    if isinstance(value, (list, str)):
        n = len(value)
        if n < m.get("min_len", 0) or n > m.get("max_len", n):
            unit = length_text(m).replace("items", "characters") if isinstance(value, str) else length_text(m)
            raise _fail(key, "must not be empty" if n == 0 and m.get("min_len") == 1
                        else f"must have {unit}, got {n}")
    if "pattern" in m and isinstance(value, str) and not re.fullmatch(m["pattern"], value):
        raise _fail(key, f"must match {m['pattern']}, got {show(value)}")
    if isinstance(value, str) and any(re.fullmatch(r, value, re.I) for r in m.get("reserved", ())):
        raise _fail(key, f"{show(value)} is reserved (the results layout uses it); not any of "
                         f"{', '.join(m['reserved'])}")
    items = value if isinstance(value, list) else [value]
    for i, v in enumerate(items):
        at = f"{key}[{i}]" if isinstance(value, list) else key
        if "choices" in m and v not in m["choices"]:
            hint = difflib.get_close_matches(str(v)[:SHOWN_CHARS], list(m["choices"]), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise _fail(at, f"unknown {show(v)}{extra}; valid: {', '.join(m['choices'])}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and math.isnan(v):
                raise _fail(at, "must be a number, got nan")
            ok = (("ge" not in m or v >= m["ge"]) and ("gt" not in m or v > m["gt"])
                  and ("le" not in m or v <= m["le"]) and ("lt" not in m or v < m["lt"]))
            if not ok:
                raise _fail(at, f"must be {range_text(m)}, got {show(v)}")


def range_text(m: Any) -> str:
    """A field's numeric bounds in words: "> 0", ">= 0 and <= 1"; empty when it has none."""
    return " and ".join(f"{sym} {m[k]}" for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if k in m)


def length_text(m: Any) -> str:
    """A field's length bounds in words: "exactly 3 items", "non-empty"; empty when it has none."""
    lo, hi = m.get("min_len"), m.get("max_len")
    if lo is None and hi is None:
        return ""
    if lo == hi:
        return f"exactly {lo} items"
    if hi is None:
        return "non-empty" if lo == 1 else f"at least {lo} items"
    return f"at most {hi} items" if lo is None else f"{lo} to {hi} items"


def bound_text(m: Any) -> str:
    """Every bound a field declares, in words (docs/JOB_SCHEMA.md); empty when it has none."""
    parts = [length_text(m)]
    rng = range_text(m)
    parts.append(f"each {rng}" if rng and parts[0] else rng)
    if "choices" in m:
        parts.append(f"each one of {', '.join(m['choices'])}")
    if "pattern" in m:
        parts.append(f"matching {m['pattern']}")
    if "reserved" in m:
        parts.append(f"not any of {', '.join(m['reserved'])}")
    return ", ".join(p for p in parts if p)


def member_count(spec: JobSpec) -> int:
    """How many members the job plans: the length of the plan's own enumeration (sweep points x
    folds x seeds, :func:`skinhpc.config.member_grid.member_grid`), without building their specs."""
    return grid_size(spec)


def check_dotted(key: str) -> None:
    """A dotted key (override, sweep) must name schema keys; list indices pass through."""
    cls: Any = JobSpec
    for part in key.split("."):
        if get_origin(cls) is list:
            if not part.isdigit():
                return
            cls = get_args(cls)[0]
            continue
        if not dataclasses.is_dataclass(cls):
            return
        types_ = hints(cls)
        if part not in types_:
            raise _fail(key[: SHOWN_CHARS * 2], f"unknown key '{part[:SHOWN_CHARS]}'{closest(part[:SHOWN_CHARS], list(types_))}")
        cls = types_[part]
        if get_origin(cls) in (Union, types.UnionType):
            cls = next((a for a in get_args(cls) if a is not type(None)), cls)


def validate(spec: JobSpec) -> None:
    """Rules that span several keys; the single-key types and bounds are checked while building."""
    if len(set(spec.seeds)) != len(spec.seeds):
        raise _fail("seeds", f"repeated seeds {show(spec.seeds)}")
    fr = spec.data.split.fractions
    if abs(sum(fr) - 1) > 1e-6:
        raise _fail("data.split.fractions", f"expected three numbers >= 0 summing to 1, got {show(fr)}")
    if spec.data.split.method == "kfold" and not spec.data.split.fold < spec.data.split.folds:
        raise _fail("data.split.fold", f"must be in 0..{spec.data.split.folds - 1} (data.split.folds - 1)")
    if spec.data.task == "multiclass" and not spec.data.classes:
        raise _fail("data.classes", "task=multiclass needs the class order (dx codes), e.g. [akiec, bcc, bkl, df, mel, nv, vasc]")
    if len(set(spec.data.classes)) != len(spec.data.classes):
        raise _fail("data.classes", f"repeated classes {show(spec.data.classes)}")
    if spec.data.task == "multiclass" and spec.train.early_stopping.metric == "malignant_auc":
        if not set(spec.data.malignant) & set(spec.data.classes):
            raise _fail("train.early_stopping.metric", f"malignant_auc needs a malignant class among data.classes "
                        f"{show(spec.data.classes)}; data.malignant is {show(spec.data.malignant)}")
        if set(spec.data.classes) <= set(spec.data.malignant):
            raise _fail("data.malignant", "every class is malignant: no benign class left for malignant_auc")
    if spec.model.metadata.images_per_patient and not spec.model.metadata.enabled:
        raise _fail("model.metadata.images_per_patient", "is a metadata input: needs model.metadata.enabled=true")
    check_train_levers(spec)
    if spec.model.pretrained == "file" and not spec.model.weights:
        raise _fail("model.weights", "pretrained=file needs a weights path")
    for key, minutes in (("cluster.time_min", spec.cluster.time_min),
                         ("cluster.stages.train.time_min", spec.cluster.stages.train.time_min)):
        if minutes is not None and minutes * 60 <= CHECKPOINT_SIGNAL_MARGIN_S:
            raise _fail(key, f"must be longer than the checkpoint signal margin "
                        f"({CHECKPOINT_SIGNAL_MARGIN_S} s before the limit), got {minutes} min")
    for section, space in (("grid", spec.sweep.grid), ("random", spec.sweep.random)):
        for key, values in space.items():
            check_dotted_in(f"sweep.{section}", key)
            if not values:
                raise _fail(f"sweep.{section}.{key}", "needs at least one value")
    n = member_count(spec)
    if spec.reduce.min_members > n:
        raise _fail("reduce.min_members", f"{spec.reduce.min_members} is more than the {n} member(s) "
                    f"planned (sweep points x folds x seeds)")


def check_train_levers(spec: JobSpec) -> None:
    """The training levers' rules (train.sampler, train.mixup, train.swa): combinations that
    cannot train as written are refused naming both keys."""
    t = spec.train
    if t.balanced_sampler and t.sampler == "sqrt":
        raise _fail("train.balanced_sampler", "true is train.sampler: balanced, and train.sampler says sqrt: "
                    "keep one (train.sampler: balanced | sqrt, without balanced_sampler)")
    if (t.mixup.alpha > 0 or t.mixup.cutmix_alpha > 0) and t.loss.name != "ce":
        raise _fail("train.mixup", f"mixup/cutmix trains on soft (mixed) targets, which "
                    f"train.loss.name={t.loss.name} does not take: use train.loss.name=ce, or "
                    f"train.mixup.alpha=0 and train.mixup.cutmix_alpha=0")
    last = t.phases[-1].epochs
    if t.swa.epochs > last:
        raise _fail("train.swa.epochs", f"{t.swa.epochs} is more than the final phase's epochs "
                    f"(train.phases[{len(t.phases) - 1}].epochs = {last})")


def check_dotted_in(section: str, key: str) -> None:
    """check_dotted with the section (``sweep.grid``) in front of the key the error names."""
    try:
        check_dotted(key)
    except SpecError as e:
        raise _fail(f"{section}.{key}"[: SHOWN_CHARS * 2], str(e).split(": ", 1)[1]) from None
