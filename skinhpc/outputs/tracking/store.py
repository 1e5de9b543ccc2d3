"""Where and how skinhpc writes to MLflow: the store, the experiment, flattening and batched writes.

Where: ``spec.reduce.mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///<results_dir>/mlflow.db`` (``make mlflow-ui`` opens that one for ``results/``).
Artifacts of a new experiment on a SQLite store go beside the database
(``<db folder>/mlartifacts``), never into the current directory.

MLflow 3 marks what an experiment is for with its ``mlflow.experimentKind`` tag; skinhpc trains
classifiers, so every experiment it writes to is tagged ``custom_model_development``, when
created and again on every later job.  The tag alone does not choose the page: MLflow 3.17's UI
opens every experiment in the GenAI overview ("Traces 0") unless the browser has chosen "Model
training" (remembered in its local storage) or the link carries ``?workflowType=machine_learning``;
:func:`ui_route` is that link, which the reduce logs and the READMEs give (a headless-Chromium
test renders it: tests/test_progress.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skinhpc.config import JobSpec, identity_view

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_MAX_PARAMS = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call
_MAX_METRICS = 1000


def tracking_uri(spec: JobSpec) -> str:
    """The store this job logs to (see the module docstring for the order)."""
    uri = spec.reduce.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{spec.results_root / 'mlflow.db'}"


def is_server(uri: str) -> bool:
    """An MLflow tracking server takes concurrent writers; a SQLite file does not."""
    return uri.startswith(("http://", "https://"))


def artifact_root(uri: str) -> str | None:
    """Artifacts beside a SQLite database; MLflow's default is ./mlartifacts of the caller's cwd."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def client_for(uri: str) -> Any:
    """An MlflowClient on ``uri`` (a SQLite database's folder is created first)."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The experiment's id, created (or restored) when needed, always tagged as model training."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_root(uri),
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # another reduce created it between our two calls
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older skinhpc, or by hand
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def ui_route(exp_id: str, run_id: str | None = None) -> str:
    """The MLflow UI's path (after the server's address) of an experiment's training runs, or
    of one run, in the model-training view."""
    page = f"#/experiments/{exp_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{page}?workflowType=machine_learning"


# --------------------------------------------------------------------------- flattening
def metric_key(key: str) -> str:
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
            out[metric_key(prefix.rstrip("."))] = float(obj)
    return out


def flatten_params(obj: Any, prefix: str = "") -> dict[str, str]:
    """A spec dict as ``section.key -> value``; lists of mappings stay one JSON value."""
    out: dict[str, str] = {}
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            out.update(flatten_params(v, f"{prefix}{k}."))
    else:
        text = obj if isinstance(obj, str) else json.dumps(obj, default=str)
        out[metric_key(prefix.rstrip("."))] = text[:6000]
    return out


def spec_params(spec: JobSpec) -> dict[str, str]:
    """What distinguishes a job's (or a member's) results: the job identity declared in the schema
    (where/how it ran is not a param)."""
    d = identity_view(spec, "job")
    d["data"]["sources"] = [
        f"{s['name'] or s['kind']}:{spec.resolve(s['root'])}" for s in d["data"]["sources"]
    ]
    return flatten_params(d)


# --------------------------------------------------------------------------- writes
def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), _MAX_PARAMS):
        client.log_batch(run_id, params=items[i : i + _MAX_PARAMS])


def log_metrics(client: Any, run_id: str, metrics: Sequence[tuple[Any, ...]],
                timestamp_ms: int | None = None) -> None:
    """``(key, value, step)`` or ``(key, value, step, timestamp_ms)`` items, in batches.

    The timestamp is when the value was measured (an epoch's end), so MLflow's time axis and
    the run's duration are the training's, not the moment the reduce copied them."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    items = [Metric(m[0], m[1], now if len(m) < 4 or m[3] is None else int(m[3]), m[2]) for m in metrics]
    for i in range(0, len(items), _MAX_METRICS):
        client.log_batch(run_id, metrics=items[i : i + _MAX_METRICS])


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object; {} when the file is absent, an error naming it when unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
