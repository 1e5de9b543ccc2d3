"""The job's configuration layer: the one schema, its loading and validation, the members it plans.

Callers import from here (``from skinhpc.config import JobSpec, load_spec``); the modules behind this
façade (schema, loader, validate, identity, docs, members) may be split or renamed without touching them.
"""

from skinhpc.config.docs import describe, schema_markdown, schema_rows
from skinhpc.config.identity import (
    LEVELS,
    cache_view,
    changed_keys,
    identity_view,
    leaf_identities,
    member_fingerprint,
)
from skinhpc.config.loader import (
    deep_merge,
    dump_yaml,
    from_dict,
    load_raw,
    load_spec,
    parse_override,
    read_yaml_file,
    set_dotted,
    with_overrides,
)
from skinhpc.config.members import Member, member_at, plan_members
from skinhpc.config.schema import (
    CHECKPOINT_SIGNAL_MARGIN_S,
    NAME_PATTERN,
    TTA_TURNING,
    TTA_VIEWS,
    AuditSpec,
    ClaheSpec,
    ClusterSpec,
    ColorConstancySpec,
    CornersSpec,
    DataSpec,
    EarlyStoppingSpec,
    EmaSpec,
    HairSpec,
    JobSpec,
    LossSpec,
    MetadataSpec,
    MlflowSpec,
    ModelSpec,
    PhaseSpec,
    PreprocessSpec,
    ReduceSpec,
    SchedulerSpec,
    SourceSpec,
    SpecError,
    SplitSpec,
    SweepSpec,
    TrainSpec,
    project_dir,
)
from skinhpc.config.validate import member_count

__all__ = [
    "CHECKPOINT_SIGNAL_MARGIN_S", "LEVELS", "NAME_PATTERN", "TTA_TURNING", "TTA_VIEWS",
    "AuditSpec", "ClaheSpec", "ClusterSpec", "ColorConstancySpec", "CornersSpec", "DataSpec",
    "EarlyStoppingSpec", "EmaSpec", "HairSpec", "JobSpec", "LossSpec", "Member", "MetadataSpec",
    "MlflowSpec", "ModelSpec", "PhaseSpec", "PreprocessSpec", "ReduceSpec", "SchedulerSpec",
    "SourceSpec", "SpecError", "SplitSpec", "SweepSpec", "TrainSpec", "cache_view", "changed_keys",
    "deep_merge", "describe", "dump_yaml", "from_dict", "identity_view", "leaf_identities", "load_raw", "read_yaml_file",
    "load_spec", "member_at", "member_count", "member_fingerprint", "parse_override", "plan_members", "project_dir",
    "schema_markdown", "schema_rows", "set_dotted", "with_overrides",
]
