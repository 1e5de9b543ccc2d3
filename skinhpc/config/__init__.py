"""The job's configuration layer: the one schema, its loading and validation, the members it plans.

Callers import from here (``from skinhpc.config import JobSpec, load_spec``); the modules behind this
façade may be split or renamed without touching them.
"""

from skinhpc.config.members import Member, plan_members
from skinhpc.config.schema import (
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
    deep_merge,
    describe,
    dump_yaml,
    from_dict,
    load_raw,
    load_spec,
    parse_override,
    set_dotted,
    with_overrides,
)

__all__ = [
    "AuditSpec", "ClaheSpec", "ClusterSpec", "ColorConstancySpec", "CornersSpec", "DataSpec",
    "EarlyStoppingSpec", "EmaSpec", "HairSpec", "JobSpec", "LossSpec", "Member", "MetadataSpec",
    "MlflowSpec", "ModelSpec", "PhaseSpec", "PreprocessSpec", "ReduceSpec", "SchedulerSpec",
    "SourceSpec", "SpecError", "SplitSpec", "SweepSpec", "TrainSpec", "deep_merge", "describe",
    "dump_yaml", "from_dict", "load_raw", "load_spec", "parse_override", "plan_members", "set_dotted",
    "with_overrides",
]
