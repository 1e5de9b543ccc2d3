"""MLflow tracking of a finished job: one parent run, one nested child run per member.

Only the reduce process writes to MLflow.  Array tasks write plain files
(``history.csv``, ``done.json``) and this module copies them into the tracking
store afterwards, so hundreds of members never race on one SQLite database
(``database is locked``, schema-migration races) and a job tracked late, or
re-tracked, gives the same runs.

Where it goes: ``spec.reduce.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
else ``sqlite:///<results_dir>/mlflow.db`` (``make mlflow-ui`` opens that one for
``results/``).  Artifacts of a new experiment on a SQLite store go beside the
database (``<db folder>/mlartifacts``), never into the current directory.

Reruns: every parent run carries ``skinhpc.job_dir`` and ``skinhpc.current``.
Tracking the same results folder again marks older parents (and their children)
``skinhpc.current=false`` and ``skinhpc.superseded_by=<new run id>`` instead of
deleting them, so history is kept and ``tags.skinhpc.current = 'true'`` finds
the live run of each job.

The ensemble is stored in the parent run as an MLflow pyfunc model
(``ensemble_model``): its artifact is a pruned copy of the results folder
(``job.yaml``, ``ensemble/thresholds.json``, ``members/<k>/best.pt``) that
:class:`EnsembleModel` loads through :class:`skinhpc.predict.EnsemblePredictor`,
the same code as ``skinhpc predict``.  The model does not bundle skinhpc's
source: the serving environment must have the skinhpc package installed
(``pip install`` this repository), which keeps one copy of the inference code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from skinhpc.config import JobSpec, Member, identity_view, plan_members
from skinhpc.io.layout import JobPaths
from skinhpc.outputs.predict import EnsemblePredictor

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "ensemble_model"
_MAX_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call


# --------------------------------------------------------------------------- where
def tracking_uri(spec: JobSpec) -> str:
    """The store this job logs to (see the module docstring for the order)."""
    uri = spec.reduce.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{spec.results_root / 'mlflow.db'}"


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite database; MLflow's default is ./mlartifacts of the caller's cwd."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def _client(spec: JobSpec):
    from mlflow import MlflowClient

    uri = tracking_uri(spec)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def _experiment_id(client: Any, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri))
    except Exception:  # another reduce created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------- flattening
def _metric_key(key: str) -> str:
    """MLflow keys allow letters, digits and ``_-. /``; anything else becomes ``_``."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", key)[:250]


def flatten_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every finite number in nested dicts as ``a.b.c``; lists (curves, confusion matrices)
    belong in artifacts, and bools and NaN are not metrics."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        if math.isfinite(float(obj)):
            out[_metric_key(prefix.rstrip("."))] = float(obj)
    return out


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """A spec dict as ``section.key -> value``; lists of mappings stay one JSON value."""
    out: dict[str, str] = {}
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    else:
        text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
        out[_metric_key(prefix.rstrip("."))] = text[:6000]
    return out


# parts of the reduce summary that are headline numbers; the rest (curves, subgroup and
# member tables, baselines) is in metrics.json, logged as an artifact
HEADLINE = ("test", "val", "malignant.test", "malignant.val", "temperature", "n_val", "n_test",
            "thresholds.threshold", "thresholds.malignant.threshold")


def headline_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """Metric name -> value for the parent run: test and val sets, gated ones with coverage."""
    out: dict[str, float] = {}
    for key in HEADLINE:
        node: Any = summary
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out.update(flatten_numbers(node, f"{key}.") if isinstance(node, dict)
                       else flatten_numbers({key: node}))
    return out or flatten_numbers(summary)


def job_params(spec: JobSpec) -> dict[str, str]:
    """What distinguishes this job's results: the job identity (where/how it ran is not a param)."""
    d = identity_view(spec, "job")
    d["data"]["sources"] = [
        f"{s['name'] or s['kind']}:{spec.resolve(s['root'])}" for s in d["data"]["sources"]
    ]
    return flatten_params(d)


def _check_coverage(metrics: dict[str, float]) -> None:
    gated = [k for k in metrics if "gated" in k.lower()]
    if gated and not any("coverage" in k.lower() for k in metrics):
        log.warning("gated metrics %s are logged without a coverage metric beside them", gated[:3])


# --------------------------------------------------------------------------- logging helpers
def _log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), _MAX_BATCH):
        client.log_batch(run_id, params=items[i : i + _MAX_BATCH])


def _log_metrics(client: Any, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, step) for k, v, step in metrics]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def history_metrics(history_csv: Path) -> list[tuple[str, float, int]]:
    """(key, value, step=epoch) for every numeric column of a member's history.csv."""
    if not history_csv.exists():
        return []
    df = pd.read_csv(history_csv)
    if df.empty:
        return []
    step_col = "epoch" if "epoch" in df.columns else None
    out = []
    for i, row in df.iterrows():
        step = int(row[step_col]) if step_col else int(i)
        for col in df.columns:
            if col == step_col:
                continue
            v = pd.to_numeric(row[col], errors="coerce")
            if pd.notna(v) and not isinstance(row[col], bool) and math.isfinite(float(v)):
                out.append((_metric_key(str(col)), float(v), step))
    return out


def _artifact_files(spec: JobSpec, paths: JobPaths) -> list[tuple[Path, str | None]]:
    """(file, artifact sub-folder) for the job-level artifacts that exist."""
    ens = paths.ensemble
    files: list[tuple[Path, str | None]] = [
        (paths.job_yaml, None),
        (paths.audit, None),
        (ens / "metrics.json", None),
        (ens / "thresholds.json", None),
        (ens / "report.html", None),
    ]
    for pattern in ("*.png", "*.svg"):
        files += [(p, "plots") for p in sorted(ens.glob(pattern))]
    for sub in ("plots", "gradcam"):
        if (ens / sub).is_dir():
            files += [(p, sub) for p in sorted((ens / sub).rglob("*")) if p.is_file()]
    onnx_verify = ens / "onnx" / "verify.json"
    files.append((onnx_verify, "onnx"))
    return [(f, sub) for f, sub in files if f.is_file()]


def _used_members(spec: JobSpec, record: dict[str, Any]) -> list[Member]:
    """The members the reduce ensembled (``members_used``): a finished member it left out
    (no loadable best.pt) gets no child run and no place in the logged model."""
    used = {int(m["index"]) for m in record.get("members_used") or []}
    return [m for m in plan_members(spec) if m.index in used]


# --------------------------------------------------------------------------- runs
def _supersede(client: Any, exp_id: str, job_dir: str, new_id: str) -> int:
    old = client.search_runs(
        [exp_id],
        filter_string=f"tags.`skinhpc.job_dir` = '{job_dir}' and tags.`skinhpc.current` = 'true'",
        max_results=1000,
    )
    n = 0
    for run in old:
        if run.info.run_id == new_id:
            continue
        children = client.search_runs(
            [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=10000
        )
        for r in [run, *children]:
            client.set_tag(r.info.run_id, "skinhpc.current", "false")
            client.set_tag(r.info.run_id, "skinhpc.superseded_by", new_id)
        n += 1
    return n


def _log_member(
    client: Any, exp_id: str, parent_id: str, spec: JobSpec, paths: JobPaths, member: Member
) -> str:
    mp = paths.member(member)
    tags = {
        "mlflow.parentRunId": parent_id,
        "mlflow.runName": f"{spec.name}/member-{member.name}",
        "skinhpc.role": "member",
        "skinhpc.member": member.name,
        "skinhpc.job_dir": str(paths.root.resolve()),
        "skinhpc.current": "true",
        "checkpoint": str(mp.best.resolve()),
    }
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    params: dict[str, Any] = {"seed": member.seed, "member": member.index}
    params.update({f"sweep.{k}": json.dumps(v) for k, v in member.overrides.items()})
    _log_params(client, rid, params)
    hist = history_metrics(mp.history)
    hist_keys = {k for k, _, _ in hist}
    done = flatten_numbers(_read_json(mp.done))
    final = [(f"done.{k}" if k in hist_keys else k, v, 0) for k, v in done.items()]
    _log_metrics(client, rid, hist + final)
    for f in (mp.history, mp.done, mp.spec_json, mp.val, mp.test):
        if f.is_file():
            client.log_artifact(rid, str(f))
    if spec.reduce.mlflow.log_checkpoints and mp.best.is_file():
        client.log_artifact(rid, str(mp.best), "checkpoint")
    client.set_terminated(rid, "FINISHED")
    return rid


def log_job(spec: JobSpec, paths: JobPaths, summary: dict[str, Any]) -> str:
    """Log the finished job (parent + one child per member + pyfunc model); returns the parent run id.

    ``summary`` holds the reduce's headline numbers (nested dicts are flattened to
    ``a.b`` metric keys); when empty, ``ensemble/metrics.json`` is used instead.
    """
    client, uri = _client(spec)
    exp_id = _experiment_id(client, spec.reduce.mlflow.experiment, uri)
    job_dir = str(paths.root.resolve())
    tags = {
        "mlflow.runName": spec.name,
        "skinhpc.role": "job",
        "skinhpc.job": spec.name,
        "skinhpc.fingerprint": spec.fingerprint(),
        "skinhpc.job_dir": job_dir,
        "skinhpc.results": job_dir,
        "skinhpc.current": "true",
        "skinhpc.task": spec.data.task,
    }
    parent = client.create_run(exp_id, tags=tags)
    pid = parent.info.run_id
    try:
        superseded = _supersede(client, exp_id, job_dir, pid)
        if superseded:
            log.info("marked %d earlier run(s) of %s as superseded by %s", superseded, job_dir, pid)
        record = summary or _read_json(paths.ensemble / "metrics.json")
        members = _used_members(spec, record)
        params = job_params(spec)
        params["members"] = str(len(members))
        _log_params(client, pid, params)
        numbers = headline_metrics(record)
        _check_coverage(numbers)
        _log_metrics(client, pid, [(k, v, 0) for k, v in numbers.items()])
        for f, sub in _artifact_files(spec, paths):
            client.log_artifact(pid, str(f), sub)
        for m in members:
            _log_member(client, exp_id, pid, spec, paths, m)
        if (paths.ensemble / "thresholds.json").is_file() and members:
            model_uri = log_ensemble_model(client, pid, spec, paths, members)
            client.set_tag(pid, "skinhpc.model_uri", model_uri)
        client.set_terminated(pid, "FINISHED")
    except BaseException:
        client.set_terminated(pid, "FAILED")
        raise
    log.info("MLflow: job %s logged as run %s in %s (experiment %s)", spec.name, pid, uri,
             spec.reduce.mlflow.experiment)
    return pid


# --------------------------------------------------------------------------- pyfunc model
def stage_model_dir(paths: JobPaths, members: list[Member], dest: Path) -> Path:
    """A pruned results folder with only what prediction reads, in the same layout."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(paths.job_yaml, dest / "job.yaml")
    (dest / "ensemble").mkdir(exist_ok=True)
    shutil.copy2(paths.ensemble / "thresholds.json", dest / "ensemble" / "thresholds.json")
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

