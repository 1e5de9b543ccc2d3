"""ONNX export of every member and of the ensemble, each checked against PyTorch.

Files in ``results/<job>/ensemble/onnx/``:

- ``member_<k>.onnx``: one member, input ``image`` float32 (N, 3, H, W) in [0, 1]
  (normalisation is inside the graph, see :class:`skinhpc.ensemble.inference.Normalized`)
  and, for metadata models, ``meta`` float32 (N, D) from
  :func:`skinhpc.data.dataset.encode_metadata`; output ``probs`` (N, C) softmax.
- ``ensemble.onnx``: the same inputs, output ``probs``: the mean of the members'
  softmax (no TTA, no temperature: those stay in ``thresholds.json`` so a
  deployment applies exactly what the reduce fitted on validation).
- ``verify.json``: the max abs difference of probabilities between onnxruntime
  and PyTorch on real preprocessed images of the job, per file.

The batch axis is dynamic.  The TorchScript-based exporter is used because the
dynamo exporter needs onnxscript, which this environment does not ship; opset 17
is well inside what onnxruntime 1.32 runs.  A difference above ``TOLERANCE``
raises :class:`ExportMismatch` after verify.json is written, so a broken export
fails the job loudly and leaves the evidence.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from skinhpc.config import JobSpec, Member
from skinhpc.data.cache import cache_path, load_cached
from skinhpc.data.dataset import encode_metadata
from skinhpc.data.images import read_rgb
from skinhpc.data.prepare import load_table
from skinhpc.data.preprocess import preprocess
from skinhpc.ensemble.inference import load_members, to_unit_tensor
from skinhpc.io.atomic import atomic_path, write_json_atomic
from skinhpc.io.layout import JobPaths

log = logging.getLogger(__name__)

OPSET = 17
TOLERANCE = 1e-4


class ExportMismatch(RuntimeError):
    """onnxruntime and PyTorch disagree beyond tolerance; the message names the file."""


class SoftmaxModel(nn.Module):
    """One member with softmax: ONNX consumers get probabilities, as the reduce does."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.model(image, meta).float(), dim=-1)


class MeanEnsemble(nn.Module):
    """All members in one graph: the mean of their softmax (reduce.ensemble=mean)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(SoftmaxModel(m) for m in models)

    def forward(self, image: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([m(image, meta) for m in self.members]).mean(0)


# --------------------------------------------------------------------------- sample images
def sample_inputs(spec: JobSpec, paths: JobPaths, n: int = 8, uses_meta: bool = False,
                  table: pd.DataFrame | None = None,
                  images_per_patient: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Real preprocessed images of the job (test split first) and their metadata rows.

    ``table`` is the job's table (rows with ``split``, ``image_id``, ``path``) when the caller
    already holds it (the reduce: its test and val frames), else it is read from the job folder.
    The cache holds exactly what the models saw; when it is gone, the same
    preprocessing is applied to the manifest's files.
    """
    table = load_table(spec, paths) if table is None else table
    order = {"test": 0, "val": 1, "train": 2}
    table = table.assign(_o=table["split"].map(order).fillna(3)).sort_values(["_o", "image_id"]).head(n)
    images = []
    for _, row in table.iterrows():
        cached = cache_path(spec.cache_dir, row["image_id"])
        if cached.is_file():
            images.append(load_cached(spec.cache_dir, row["image_id"]))
        else:
            images.append(preprocess(read_rgb(row["path"]), spec.preprocess))
    if not images:
        raise ValueError(f"{paths.root}: no images in the job's table to verify the ONNX export on")
    meta = None
    if uses_meta:
        meta = np.asarray(encode_metadata(table.reset_index(drop=True), images_per_patient), dtype=np.float32)
    return np.stack(images), meta


# --------------------------------------------------------------------------- export + check
def export_model(model: nn.Module, path: Path, example: tuple[torch.Tensor, ...]) -> None:
    """Export with a dynamic batch axis; written atomically."""
    names = ["image", "meta"][: len(example)]
    axes = {name: {0: "batch"} for name in names}
    axes["probs"] = {0: "batch"}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
        torch.onnx.export(
            model.eval(), example, str(tmp), dynamo=False, input_names=names, output_names=["probs"],
            dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True,
        )


def onnx_probs(path: Path, image: np.ndarray, meta: np.ndarray | None) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # deterministic sums; verification is a few images
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"image": image.astype(np.float32)}
    if meta is not None and any(i.name == "meta" for i in sess.get_inputs()):
        feed["meta"] = meta.astype(np.float32)
    return sess.run(["probs"], feed)[0]


def verify(model: nn.Module, path: Path, image: torch.Tensor, meta: torch.Tensor | None) -> dict[str, Any]:
    """Max abs difference of probabilities, onnxruntime vs PyTorch, on the same inputs."""
    with torch.inference_mode():
        ref = model(image, meta).float().numpy()
    got = onnx_probs(path, image.numpy(), None if meta is None else meta.numpy())
    if got.shape != ref.shape:
        raise ExportMismatch(f"{path}: output shape {got.shape}, PyTorch gives {ref.shape}")
    return {"file": path.name, "max_abs_diff": float(np.abs(got - ref).max()), "images": int(image.shape[0]),
            "bytes": path.stat().st_size}


def _cpu_float(model: nn.Module) -> nn.Module:
    """A float32 CPU copy in eval mode: the export traces on CPU and must not move or re-type the
    caller's model (the reduce's members may sit on a GPU in bf16-friendly form)."""
    return copy.deepcopy(model).to("cpu").float().eval()


def export_job(spec: JobSpec, paths: JobPaths, n_images: int = 8, *,
               members: Sequence[Member] | None = None, models: Sequence[nn.Module] | None = None,
               table: pd.DataFrame | None = None) -> dict[str, Any]:
    """Export members + ensemble to ``ensemble/onnx/``, verify each; returns the verify record.

    The reduce passes the ``members`` and ``models`` it already loaded (same order) and its
    table (``table``) so nothing is read twice; standalone, checkpoints and the table are
    loaded from the job folder.
    """
    t0 = time.perf_counter()
    if (members is None) != (models is None):
        raise ValueError("export_job: pass both members and models (same order), or neither")
    if members is not None and models is not None:
        if len(members) != len(models):
            raise ValueError(f"export_job: {len(members)} member(s) but {len(models)} model(s)")
        loaded = [(m, _cpu_float(net)) for m, net in zip(members, models, strict=True)]
    else:
        loaded = [(m, net.float().eval()) for m, net in load_members(spec, paths, "cpu")]
    models = [m for _, m in loaded]
    uses_meta = any(getattr(m, "uses_meta", False) for m in models)
    imgs, meta_np = sample_inputs(spec, paths, n_images, uses_meta, table,
                                  any(getattr(m, "patient_images", False) for m in models))
    image = to_unit_tensor(imgs)
    meta = None if meta_np is None else torch.from_numpy(meta_np)
    example = (image[:2],) if meta is None else (image[:2], meta[:2])
    out_dir = paths.onnx_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    for member, model in loaded:
        wrapped = SoftmaxModel(model).eval()
        path = paths.onnx_member(member.name)
        export_model(wrapped, path, example)
        files.append({"member": member.name, **verify(wrapped, path, image, meta)})
    ensemble = MeanEnsemble(models).eval()
    path = paths.onnx_ensemble
    export_model(ensemble, path, example)
    files.append({"member": "ensemble", **verify(ensemble, path, image, meta)})
    worst = max(f["max_abs_diff"] for f in files)
    record = {
        "opset": OPSET,
        "tolerance": TOLERANCE,
        "max_abs_diff": worst,
        "ok": worst <= TOLERANCE,
        "inputs": {"image": f"float32 (N, 3, {imgs.shape[1]}, {imgs.shape[2]}) in [0, 1], RGB"}
        | ({"meta": f"float32 (N, {meta_np.shape[1]}) encode_metadata"} if meta_np is not None else {}),
        "output": f"probs float32 (N, {len(spec.class_names)}) in order {spec.class_names}",
        "ensemble_note": "mean of member softmax; apply TTA, temperature and threshold from thresholds.json",
        "files": files,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    write_json_atomic(paths.onnx_verify, record)
    bad = [f for f in files if f["max_abs_diff"] > TOLERANCE]
    if bad:
        raise ExportMismatch(
            "ONNX export differs from PyTorch beyond "
            f"{TOLERANCE}: " + ", ".join(f"{paths.onnx_file(f['file'])}: {f['max_abs_diff']:.2e}" for f in bad)
        )
    log.info("ONNX: %d member(s) + ensemble in %s, max abs diff %.2e", len(loaded), out_dir, worst)
    return record

