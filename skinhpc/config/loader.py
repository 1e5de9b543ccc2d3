"""Reading a job: safe YAML (YAML-1.2 floats, no aliases), includes, overrides, then the schema.

While includes are merged, the file every key came from is kept beside the merged mapping
(``Origins``), so an unknown or mistyped key from a fragment names the fragment, not the job
file that included it. Nothing here checks the environment (data folders, weights): loading is
pure apart from reading the YAML files themselves.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from skinhpc.config.bounded import UnreadableFileError, read_bounded
from skinhpc.config.schema import JobSpec, SpecError
from skinhpc.config.validate import (
    NotReplaceable,
    build_spec,
    check_dotted,
    replace_dotted,
    show,
    validate,
)

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# dotted key path (mapping keys and list indices as strings) -> the file (or override) that set it
Origins = dict[tuple[str, ...], str]
_OVERRIDE = "override "
# A job file or fragment is a few KiB; a generated sweep a few hundred. Anything near this is not
# a job (``include: [/dev/zero]`` read 7.9 GB before failing).
MAX_YAML_BYTES = 8 * 2**20


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's C parser when present (the same safe subset, several times faster at launch),
    reading floats the YAML 1.2 way: PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is the
    *string* "1e-4", so ``lr: 1e-4`` would be refused as "expected a number".

    A key given twice in one mapping is refused naming both lines: PyYAML keeps the last one, so
    a second ``train:`` would silently drop every setting of the first."""

    where = "YAML"

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue  # a non-scalar key is refused by the constructor itself
                line, key = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
                if key in first:
                    raise SpecError(f"{self.where}: line {line}: key {show(key_node.value)} is given "
                                    f"twice in one mapping (first on line {first[key]}); the second "
                                    f"would silently replace the first: merge them")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def _load(text: str, where: str) -> Any:
    """YAML without anchors or aliases, refused from the event stream *before* anything is
    built: expanding them first lets a few lines of nested aliases grow to gigabytes.
    Raises SpecError for an alias, yaml.YAMLError for text that is not YAML. Text with no ``&``
    and no ``*`` cannot hold either (both are spelt with them), so it is parsed once, not twice."""
    for event in yaml.parse(text, Loader=_Loader) if "&" in text or "*" in text else ():
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise SpecError(f"{where}: line {event.start_mark.line + 1}: YAML anchors and aliases "
                            f"(&name, *name) are not accepted; write the value out or use include:")
    loader = _Loader(text)  # a safe loader
    loader.where = where
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def safe_load(text: str, where: str) -> Any:
    """:func:`_load` with invalid YAML reported as a SpecError naming ``where``."""
    try:
        return _load(text, where)
    except yaml.YAMLError as e:
        raise SpecError(f"{where}: invalid YAML: {str(e)[:400]}") from None


def read_yaml_file(path: str | Path) -> Any:
    """A user's YAML file as Python data, read the one way every YAML file is: a regular file under
    :data:`MAX_YAML_BYTES`, duplicate keys refused naming both lines (a job, an include, the data
    fragment of ``skinhpc evaluate --data``)."""
    try:
        text = read_bounded(path, MAX_YAML_BYTES, "a YAML file").decode()
    except UnreadableFileError as e:
        raise SpecError(str(e)) from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: cannot read: {e}") from None
    return safe_load(text, str(path))


def _read_yaml(path: Path) -> dict:
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """Mapping merge where ``over`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _record(node: Any, prefix: tuple[str, ...], source: str, origins: Origins) -> None:
    """Mark ``prefix`` and every key below it as set by ``source``; what an earlier file set
    below a key this one replaces whole (a list, a scalar) is forgotten."""
    if not isinstance(node, dict):
        for p in [p for p in origins if len(p) > len(prefix) and p[: len(prefix)] == prefix]:
            del origins[p]
    if prefix:
        origins[prefix] = source
    if isinstance(node, dict):
        for k, v in node.items():
            _record(v, prefix + (str(k),), source, origins)


def _absolutise_sources(raw: dict, folder: Path) -> None:
    """Source roots in a fragment are relative to that fragment's folder."""
    data = raw.get("data")
    sources = data.get("sources") if isinstance(data, dict) else None
    for src in sources if isinstance(sources, list) else []:
        if isinstance(src, dict) and isinstance(src.get("root"), str) and not Path(src["root"]).expanduser().is_absolute():
            src["root"] = str((folder / src["root"]).resolve())


def load_traced(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[dict, Origins]:
    """The YAML with its ``include`` list merged in (includes first, the file itself wins),
    and the file each key came from."""
    path = path.resolve()
    if path in _seen:
        raise SpecError(f"{path}: include cycle via {' -> '.join(map(str, _seen))}")
    raw = _read_yaml(path)
    includes = raw.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SpecError(f"{path}: include: expected a list of paths, got {show(includes)}")
    _absolutise_sources(raw, path.parent)
    merged: dict = {}
    origins: Origins = {}
    for inc in includes:
        inc_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        try:
            sub, sub_origins = load_traced(inc_path, _seen + (path,))
        except SpecError as e:
            raise SpecError(f"{e} (included from {path})", key=e.key) from None
        merged = deep_merge(merged, sub)
        for key in sorted(sub_origins, key=len):
            _record({} if _is_mapping_at(sub, key) else None, key, sub_origins[key], origins)
    _record(raw, (), str(path), origins)
    return deep_merge(merged, raw), origins


def _is_mapping_at(raw: dict, key: tuple[str, ...]) -> bool:
    node: Any = raw
    for k in key:
        node = node.get(k) if isinstance(node, dict) else None
    return isinstance(node, dict)


def load_raw(path: Path) -> dict:
    """The YAML with its ``include`` list merged in (includes first, the file itself wins)."""
    return load_traced(path)[0]


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SpecError(f"override {show(text)}: expected key.path=value")
    key, value = text.split("=", 1)
    try:
        parsed = _load(value, f"override {show(text)}") if value != "" else ""
    except yaml.YAMLError:
        parsed = value  # not YAML: the text itself (a string value)
    return key.strip().split("."), parsed


def _default_at(keys: list[str]) -> Any:
    """The schema default at a dotted path (None where there is none)."""
    node: Any = JobSpec(name="_").to_dict()
    for k in keys:
        if isinstance(node, dict) and k in node:
            node = node[k]
        else:
            return None
    return copy.deepcopy(node)


def set_dotted(raw: dict, keys: list[str], value: Any) -> None:
    """Set ``a.b.0.c`` in a raw job.  A list the job leaves at its default (``train.phases``)
    is first copied from the schema, so ``train.phases.1.lr=...`` patches the default phases."""
    where = f"override {'.'.join(keys)}"
    node: Any = raw
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise SpecError(f"{where}: {show(k)} is not an index of this {len(node)}-item list", key=".".join(keys))
            if last:
                node[int(k)] = value
                return
            node = node[int(k)]
            continue
        if not isinstance(node, dict):
            raise SpecError(f"{where}: {keys[i - 1]} is not a mapping", key=".".join(keys))
        if last:
            node[k] = value
            return
        if k not in node:
            default = _default_at(keys[: i + 1])
            node[k] = default if isinstance(default, (dict, list)) and keys[i + 1].isdigit() else {}
        node = node[k]


def _key_path(key: str) -> tuple[str, ...]:
    """``data.sources[0].root`` -> ("data", "sources", "0", "root")."""
    return tuple(p for p in re.split(r"[.\[\]]+", key) if p)


def _source_of(key: str | None, origins: Origins | None) -> str | None:
    """The file (or override) that set ``key`` or the nearest key above it."""
    if not key or not origins:
        return None
    parts = _key_path(key)
    for n in range(len(parts), 0, -1):
        if parts[:n] in origins:
            return origins[parts[:n]]
    return None


def from_dict(raw: dict, where: str = "job", origins: Origins | None = None) -> JobSpec:
    """A validated JobSpec from plain data; errors start with the file that holds the bad key
    (``origins`` from :func:`load_traced`), else ``where``."""
    try:
        spec = build_spec(raw)
        validate(spec)
    except SpecError as e:
        source = _source_of(e.key, origins)
        if source and source.startswith(_OVERRIDE):
            raise SpecError(f"{where}: {source}: {e}", key=e.key) from None
        if source and source != where:
            raise SpecError(f"{source}: {e} (included from {where})", key=e.key) from None
        raise SpecError(f"{where}: {e}", key=e.key) from None
    return spec


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read a job file, merge its includes, apply ``key=value`` overrides, validate."""
    path = Path(path)
    raw, origins = load_traced(path)
    top = str(path.resolve())
    origins = {k: (str(path) if v == top else v) for k, v in origins.items()}
    for ov in overrides:
        keys, value = parse_override(ov)
        try:
            check_dotted(".".join(keys))
        except SpecError as e:
            raise SpecError(f"override {show(ov)}: {e}", key=e.key) from None
        set_dotted(raw, keys, value)
        _record(value, tuple(keys), f"{_OVERRIDE}{show(ov)}", origins)
    raw.setdefault("base_dir", str(path.resolve().parent))
    return from_dict(raw, str(path), origins)


def with_overrides(spec: JobSpec, values: dict[str, Any]) -> JobSpec:
    """A copy of ``spec`` with dotted keys replaced (sweep points), validated again: only the
    replaced keys and the cross-field rules (:func:`replace_dotted`) where it can, else rebuilt."""
    where = f"job {spec.name} with {show(values)}"
    try:
        return replace_dotted(spec, values)
    except SpecError as e:
        raise SpecError(f"{where}: {e}", key=e.key) from None
    except NotReplaceable:
        pass
    raw = spec.to_dict()
    for key, value in values.items():
        set_dotted(raw, key.split("."), value)
    return from_dict(raw, where)


def _plain(value: Any) -> Any:
    """``dataclasses.asdict`` for a validated spec (dataclasses, lists, dicts and scalars only),
    without its deep copy of every leaf: a third of job.yaml's cost at launch."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def dump_yaml(spec: JobSpec) -> str:
    """job.yaml's text: the spec as plain data, emitted by libyaml's C dumper where present."""
    return yaml.dump(_plain(spec), Dumper=_Dumper, sort_keys=False)
