"""The job's ensemble as an MLflow pyfunc model (``ensemble_model`` in the parent run).

Its artifact is a pruned copy of the results folder (``job.yaml``, ``ensemble/thresholds.json``,
``members/<k>/best.pt``) that :class:`EnsembleModel` loads through
:class:`skinhpc.ensemble.predictor.EnsemblePredictor`, the same code as ``skinhpc predict``.  The
model does not bundle skinhpc's source: the serving environment must have the skinhpc package
installed (``pip install`` this repository), which keeps one copy of the inference code.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from skinhpc.config import JobSpec, Member
from skinhpc.ensemble.predictor import EnsemblePredictor
from skinhpc.io.atomic import COMPLETE_MARKER
from skinhpc.io.layout import JobPaths

MODEL_ARTIFACT = "ensemble_model"

def stage_model_dir(paths: JobPaths, members: list[Member], dest: Path) -> Path:
    """A pruned results folder with only what prediction reads, in the same layout."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(paths.job_yaml, dest / "job.yaml")
    (dest / "ensemble").mkdir(exist_ok=True)
    shutil.copy2(paths.ensemble / "thresholds.json", dest / "ensemble" / "thresholds.json")
    # the reduce logs the model before it commits ensemble/ (its marker comes last): the copy
    # holds what a complete reduce computed, so it is marked complete for the predictor
    (dest / "ensemble" / COMPLETE_MARKER).write_text("")
    dest_paths = JobPaths(dest)
    for m in members:
        src, dst = paths.member(m), dest_paths.member(m)
        dst.root.mkdir(parents=True, exist_ok=True)
        for f in (src.best, src.spec_json, src.done):
            if f.is_file():
                shutil.copy2(f, dst.root / f.name)
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


def log_ensemble_model(
    client: Any, run_id: str, spec: JobSpec, paths: JobPaths, members: list[Member]
) -> str:
    """Save the ensemble as a pyfunc model into the run (and the registry); returns its URI."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "path")]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "decision")]),
    )
    with tempfile.TemporaryDirectory(prefix="skinhpc-model-") as tmp:
        staged = stage_model_dir(paths, members, Path(tmp) / "job")
        model_dir = Path(tmp) / MODEL_ARTIFACT
        mlflow.pyfunc.save_model(
            str(model_dir),
            python_model=EnsembleModel(),
            artifacts={"job": str(staged)},
            signature=signature,
            pip_requirements=_pip_requirements(),
            metadata={"skinhpc_job": spec.name, "fingerprint": spec.fingerprint()},
        )
        client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT)
    model_uri = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    if spec.reduce.mlflow.register_model:
        name = f"skinhpc-{spec.name}"
        try:
            client.create_registered_model(name)
        except Exception:  # already registered: add a version
            pass
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        mv = client.create_model_version(name, source, run_id=run_id)
        client.set_tag(run_id, "skinhpc.registered_model", f"{name}/{mv.version}")
    return model_uri


from mlflow.pyfunc import PythonModel  # noqa: E402 - the base class, needed at import for pickling


class EnsembleModel(PythonModel):
    """The job's ensemble behind MLflow's pyfunc interface.

    Input: a DataFrame with a ``path`` column of image files (optional ``age``,
    ``sex``, ``site`` for metadata models).  Output: one row per input with
    ``probability`` (malignant), ``decision`` (malignant | benign | refer | error),
    the class probabilities, ``confidence`` and ``error``.
    """

    def load_context(self, context: Any) -> None:
        self.predictor = EnsemblePredictor(context.artifacts["job"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "path" not in model_input.columns:
            raise ValueError(f"input needs a 'path' column, got columns {list(model_input.columns)}")
        meta = model_input.drop(columns=["path"])
        out = self.predictor.predict_files(
            [str(p) for p in model_input["path"]], meta if len(meta.columns) else None
        )
        out = out.rename(columns={"prob_malignant": "probability"})
        return out

