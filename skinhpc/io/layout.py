"""The results-folder layout every stage reads and writes.

The layout is the contract between stages: each arrow of the pipeline is a file
here, so any stage can be rerun, resumed or inspected on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from skinhpc.config import Member
from skinhpc.io.atomic import COMPLETE_MARKER
from skinhpc.io.lock import LOCK_NAME


class JobPaths:
    """Where each stage's files live inside ``results/<job>/``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    job_yaml = property(lambda self: self.root / "job.yaml")
    manifest = property(lambda self: self.root / "manifest.csv")
    splits = property(lambda self: self.root / "splits.csv")
    audit = property(lambda self: self.root / "audit.json")
    duplicates = property(lambda self: self.root / "duplicates.json")
    """Images prepare dropped as copies of others, and label disagreements."""
    tables_meta = property(lambda self: self.root / "prepare.tables.json")
    """The spec hash the tables were made for: whether manifest/splits are current."""
    sources_record = property(lambda self: self.root / "prepare.sources.json")
    """Each metadata file prepare read (path, size, mtime, sha256)."""
    prepare_reports = property(lambda self: self.root / "prepare")
    """The cache shard reports of prepare's array tasks."""
    prepare_done = property(lambda self: self.root / "prepare.done.json")
    lock = property(lambda self: self.root / LOCK_NAME)
    """The job's command lock (:func:`skinhpc.io.lock.job_lock`)."""
    state_dir = property(lambda self: self.root / "state")
    """One record per stage: who ran it, pid and start time, outcome."""
    members_dir = property(lambda self: self.root / "members")
    ensemble = property(lambda self: self._ensemble or self.root / "ensemble")
    _ensemble: Path | None = None

    def staging_ensemble(self, folder: str | Path) -> JobPaths:
        """The same job with its ``ensemble/`` files going to ``folder``: the reduce builds the
        whole folder there and commits it as a unit (:func:`skinhpc.io.atomic.atomic_dir`)."""
        staged = JobPaths(self.root)
        staged._ensemble = Path(folder)
        return staged
    submitit = property(lambda self: self.root / "submitit")
    driver_plan = property(lambda self: self.root / "submitit" / "plan.pkl")  # the local driver's
    driver_log = property(lambda self: self.submitit / "driver.log")
    """The detached local driver's stdout and stderr."""
    launches = property(lambda self: self.root / "launches.jsonl")

    # ensemble/ (each under ``self.ensemble``, so a staged reduce writes them to its staging folder)
    ensemble_complete = property(lambda self: self.ensemble / COMPLETE_MARKER)
    """Written last by a committed reduce: ``ensemble/`` is whole."""
    thresholds = property(lambda self: self.ensemble / "thresholds.json")
    """The operating point picked on validation, temperature, TTA: what prediction applies."""
    metrics = property(lambda self: self.ensemble / "metrics.json")
    """The reduce's summary: metrics per split, plots, gradcam and ONNX records."""
    report = property(lambda self: self.ensemble / "report.html")
    """The job's HTML report."""
    plots_dir = property(lambda self: self.ensemble / "plots")
    """The report's figures."""
    gradcam_dir = property(lambda self: self.ensemble / "gradcam")
    """The Grad-CAM gallery."""
    onnx_dir = property(lambda self: self.ensemble / "onnx")
    """The exported ONNX models and their check."""
    onnx_ensemble = property(lambda self: self.onnx_file("ensemble.onnx"))
    """The mean-of-softmax ensemble as one ONNX model."""
    onnx_verify = property(lambda self: self.onnx_file("verify.json"))
    """ONNX vs PyTorch outputs on sample images: the largest difference, per file."""

    def predictions(self, split: str) -> Path:
        """The ensemble's per-image probabilities and decisions on ``split`` (val, test)."""
        return self.ensemble / f"predictions_{split}.csv"

    def in_ensemble(self, relative: str | Path) -> Path:
        """A file of ``ensemble/`` by the relative path a reduce recorded (metrics.json's plots)."""
        return self.ensemble / relative

    def gradcam_image(self, file: str) -> Path:
        """One overlay of the Grad-CAM gallery, by the file name metrics.json records."""
        return self.gradcam_dir / file

    def onnx_member(self, name: str) -> Path:
        """One member exported to ONNX (softmax outputs)."""
        return self.onnx_file(f"member_{name}.onnx")

    def onnx_file(self, file: str) -> Path:
        """A file of ``onnx/`` by the name verify.json records."""
        return self.onnx_dir / file

    def stage_state(self, stage: str) -> Path:
        """A stage's record (:mod:`skinhpc.io.state`)."""
        return self.state_dir / f"{stage}.json"

    def stage_error(self, stage: str) -> Path:
        """A stage's last traceback: a job-level stage's in state/, a member's (``member-<k>``)
        beside its outputs (``MemberPaths.error``)."""
        if stage.startswith("member-"):
            return self.member(int(stage.split("-", 1)[1])).error
        return self.state_dir / f"{stage}.error.txt"

    def shard_report(self, manifest_hash: str, shard: int, num_shards: int) -> Path:
        """What one cache shard of prepare built, for the manifest with that hash."""
        return self.prepare_reports / f"{manifest_hash}-{shard}-of-{num_shards}.json"

    def shard_reports(self, manifest_hash: str) -> Iterator[tuple[int, int, Path]]:
        """(shard, num_shards, path) of each shard report on disk for that manifest."""
        for p in self.prepare_reports.glob(f"{manifest_hash}-*-of-*.json"):
            m = re.fullmatch(rf"{re.escape(manifest_hash)}-(\d+)-of-(\d+)\.json", p.name)
            if m:
                yield int(m.group(1)), int(m.group(2)), p

    def kept_spec(self, stamp: str) -> Path:
        """A previous job.yaml kept when a launch changed only reduce settings."""
        return self.root / f"job.{stamp}.yaml"

    def array_template(self, token: str) -> Path:
        """The one pickled callable every task of a SLURM array copies (backends.slurm)."""
        return self.submitit / f"array_{token}.pkl"

    def member(self, member: Member | int) -> MemberPaths:
        index = member.index if isinstance(member, Member) else member
        return MemberPaths(self.members_dir / f"{index:03d}")


class MemberPaths:
    def __init__(self, root: Path):
        self.root = root

    spec_json = property(lambda self: self.root / "spec.json")
    best = property(lambda self: self.root / "best.pt")
    last = property(lambda self: self.root / "last.pt")
    history = property(lambda self: self.root / "history.csv")
    val = property(lambda self: self.root / "val.csv")
    test = property(lambda self: self.root / "test.csv")
    done = property(lambda self: self.root / "done.json")
    error = property(lambda self: self.root / "error.txt")
    step = property(lambda self: self.root / "step.json")  # the epoch under way, for status


class CachePaths:
    """The shared preprocessed-image cache (``spec.cache_dir``): one entry per image id,
    reused across jobs with the same preprocessing."""

    SOURCE_SUFFIX = ".source.json"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / "preprocess.json")
    """The preprocessing every entry in this folder was made with."""

    def entry(self, image_id: str) -> Path:
        """One preprocessed image (uint8 HxWx3 ``.npy``)."""
        return self.root / f"{image_id}.npy"

    def source(self, image_id: str) -> Path:
        """What ``entry(image_id)`` was made from (path, size, mtime_ns, sha256)."""
        return self.root / f"{image_id}{self.SOURCE_SUFFIX}"

    @classmethod
    def source_beside(cls, entry: Path) -> Path:
        """The source record of the entry at ``entry`` (its folder and id)."""
        return entry.with_name(entry.name[: -len(".npy")] + cls.SOURCE_SUFFIX)
