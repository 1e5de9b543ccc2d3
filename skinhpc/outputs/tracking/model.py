"""The job's ensemble as an MLflow pyfunc model, logged the MLflow 3 way into the parent run.

``mlflow.pyfunc.log_model`` makes a *logged model* (``models:/<model_id>``) whose source run is
the job's parent run, so the run page's "Logged models", the experiment's Models tab and the
registered model version all point at the same thing; the job's test metrics are logged on it.

Its artifact is a pruned copy of the results folder (``job.yaml``, ``ensemble/thresholds.json``,
``members/<k>/best.pt``) that :class:`EnsembleModel` loads through
:class:`skinhpc.ensemble.predictor.EnsemblePredictor`, the same code as ``skinhpc predict``.  The
model does not bundle skinhpc's source: the serving environment must have the skinhpc package
installed (``pip install`` this repository), which keeps one copy of the inference code.

Input: an ``image`` column of encoded image bytes (MLflow's binary type: base64 in the JSON of
``mlflow models serve``), or a ``path`` column of files on the server's disk, plus optional
``age``, ``sex``, ``site`` metadata.  A row that cannot be scored answers ``decision=error``,
its reason in ``error`` and ``null`` probabilities: JSON has no NaN, and strict parsers refuse it.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinhpc.config import JobSpec, Member
from skinhpc.data.prepare import load_table
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.io.layout import JobPaths
from skinhpc.outputs.tracking.store import tracking_uri

MODEL_ARTIFACT = "ensemble_model"
IMAGE_COL, PATH_COL = "image", "path"
META_COLS = {"age": "double", "sex": "string", "site": "string"}
# the parent run's metrics that the logged model carries too (its Models-tab columns)
MODEL_METRIC_PREFIXES = ("test.", "malignant.test.", "n_test")
_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def stage_model_dir(paths: JobPaths, members: list[Member], dest: Path) -> Path:
    """A pruned results folder with only what prediction reads, in the same layout."""
    dest.mkdir(parents=True, exist_ok=True)
    dest_paths = JobPaths(dest)
    shutil.copy2(paths.job_yaml, dest_paths.job_yaml)
    dest_paths.ensemble.mkdir(exist_ok=True)
    shutil.copy2(paths.thresholds, dest_paths.thresholds)
    # the reduce logs the model before it commits ensemble/ (its marker comes last): the copy
    # holds what a complete reduce computed, so it is marked complete for the predictor
    dest_paths.ensemble_complete.write_text("")
    for m in members:
        src, dst = paths.member(m), dest_paths.member(m)
        dst.root.mkdir(parents=True, exist_ok=True)
        for f, to in ((src.best, dst.best), (src.spec_json, dst.spec_json), (src.done, dst.done)):
            if f.is_file():
                shutil.copy2(f, to)
    return dest


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "torchvision", "timm", "numpy", "pandas", "opencv-python-headless", "pyyaml"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def model_signature() -> Any:
    """Image bytes or a path (each optional: a row gives one), metadata optional; the output
    names every column a binary or multiclass job may answer with."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = [ColSpec("binary", IMAGE_COL, required=False), ColSpec("string", PATH_COL, required=False)]
    inputs += [ColSpec(t, name, required=False) for name, t in META_COLS.items()]
    outputs = [ColSpec("double", "probability", required=False), ColSpec("string", "decision"),
               ColSpec("string", "error")]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def input_example(spec: JobSpec, paths: JobPaths) -> pd.DataFrame | None:
    """One real test image of the job as bytes (what a client sends), or None without one."""
    try:
        table = load_table(spec, paths)
    except (OSError, ValueError, KeyError):
        return None
    for split in ("test", "val", "train"):
        for f in table.loc[table["split"] == split, "path"].head(5):
            if Path(f).is_file():
                return pd.DataFrame({IMAGE_COL: [Path(f).read_bytes()]})
    return None


def _model_metrics(client: Any, run_id: str) -> dict[str, float]:
    metrics = client.get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith(MODEL_METRIC_PREFIXES)}


@contextmanager
def _global_store(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``log_model``, ``start_run``) works on the process-wide store: point
    it at ``uri`` for the call, then put back exactly what was there.  ``set_tracking_uri`` also
    exports ``MLFLOW_TRACKING_URI`` to the environment, which would redirect every later job of
    this process (tests, a notebook) to this job's store, so the variables are restored too."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in _URI_VARIABLES}
    saved = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_ensemble_model(
    client: Any, run_id: str, spec: JobSpec, paths: JobPaths, members: list[Member]
) -> str:
    """Log the ensemble as a pyfunc logged model of the run (and a registered model version,
    with ``reduce.mlflow.register_model``), its test metrics on it; returns ``models:/<id>``."""
    import mlflow
    import mlflow.pyfunc

    name = f"skinhpc-{spec.name}" if spec.reduce.mlflow.register_model else None
    example = input_example(spec, paths)
    with _global_store(tracking_uri(spec)), tempfile.TemporaryDirectory(prefix="skinhpc-model-") as tmp, \
            mlflow.start_run(run_id=run_id, log_system_metrics=False):
        staged = stage_model_dir(paths, members, Path(tmp) / "job")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=EnsembleModel(),
            artifacts={"job": str(staged)},
            signature=model_signature(),
            input_example=example,
            pip_requirements=_pip_requirements(),
            metadata={"skinhpc_job": spec.name, "fingerprint": spec.fingerprint()},
            registered_model_name=name,
            tags={"skinhpc.job": spec.name, "skinhpc.fingerprint": spec.fingerprint()},
        )
        metrics = _model_metrics(client, run_id)
        if metrics:
            mlflow.log_metrics(metrics, step=0, model_id=info.model_id, run_id=run_id)
    client.set_tag(run_id, "skinhpc.model_id", info.model_id)
    if name is not None and info.registered_model_version is not None:
        client.set_tag(run_id, "skinhpc.registered_model", f"{name}/{info.registered_model_version}")
    return f"models:/{info.model_id}"


from mlflow.pyfunc import PythonModel  # noqa: E402 - the base class, needed at import for pickling


def _as_bytes(value: Any) -> bytes | None:
    """A binary cell: bytes as sent, or base64 text (a caller that skipped MLflow's decoding)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            return value.encode()
    raise TypeError(f"image cell of type {type(value).__name__}, expected bytes")


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value) != ""


def json_safe(out: pd.DataFrame) -> pd.DataFrame:
    """Float columns as objects with ``None`` where a row has no number (JSON ``null``)."""
    out = out.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            values = out[col].to_numpy(dtype=float)
            out[col] = pd.Series([None if np.isnan(v) else float(v) for v in values], index=out.index,
                                 dtype=object)
        elif out[col].dtype == object:
            out[col] = out[col].where(out[col].notna(), None)
    return out


class EnsembleModel(PythonModel):
    """The job's ensemble behind MLflow's pyfunc interface.

    Input: a DataFrame with an ``image`` column (encoded image bytes) and/or a ``path`` column
    (image files on this machine), one of them set in each row, and optional ``age``, ``sex``,
    ``site`` for metadata models.  Output: one row per input with ``probability`` (malignant),
    ``decision`` (malignant | benign | refer | error), the class probabilities, ``confidence``
    and ``error``; a failed row has ``None`` numbers.
    """

    def load_context(self, context: Any) -> None:
        self.predictor = EnsemblePredictor(context.artifacts["job"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        cols = set(model_input.columns)
        if not cols & {IMAGE_COL, PATH_COL}:
            raise ValueError(f"input needs an {IMAGE_COL!r} (bytes) or {PATH_COL!r} column, "
                             f"got columns {list(model_input.columns)}")
        rows = model_input.reset_index(drop=True)
        meta = rows[[c for c in META_COLS if c in cols]]
        with tempfile.TemporaryDirectory(prefix="skinhpc-serve-") as tmp:
            # bytes go through a file so they are decoded by exactly the code `skinhpc predict` runs
            files, shown = [], []
            for i, row in rows.iterrows():
                data = _as_bytes(row[IMAGE_COL]) if IMAGE_COL in cols else None
                if data is not None:
                    f = Path(tmp) / f"row{i}"
                    f.write_bytes(data)
                    files.append(str(f))
                    shown.append((str(f), f"row {i} (image bytes)"))
                elif PATH_COL in cols and _present(row[PATH_COL]):
                    files.append(str(row[PATH_COL]))
                else:
                    f = Path(tmp) / f"row{i}-empty"
                    files.append(str(f))
                    shown.append((str(f), f"row {i} (no {IMAGE_COL} bytes and no {PATH_COL})"))
            out = self.predictor.predict_files(files, meta if len(meta.columns) else None)
        for tmp_name, label in shown:
            out["path"] = out["path"].replace(tmp_name, "" if "bytes" in label else label)
            out["error"] = out["error"].str.replace(tmp_name, label, regex=False)
        out = out.rename(columns={"prob_malignant": "probability"})
        return json_safe(out)
