"""Can this job's MLflow store be written now?  Asked once at launch, by each member before it
logs live, and by the reduce before it mirrors the results, so that a store that is down costs
one short probe instead of MLflow's retries (7 by default, with backoff: minutes a call).

Light on purpose (standard library and the job schema): the launch process imports it, and
MLflow and torch stay out of that process.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from skinhpc.config import JobSpec, SpecError
from skinhpc.outputs.tracking.store import is_server, tracking_uri

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
RETRIES_ENV, TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"


def unreachable(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the store at ``uri`` cannot take writes now, or None when it can (as far as a probe
    can tell: a server must answer its ``/health`` (or ask for credentials); a SQLite file needs a
    writable folder).

    One plain HTTP request to the server's ``/health`` with a short timeout and no retries."""
    if is_server(uri):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return None
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):  # a server behind authentication: MLflow's credentials decide
                return None
            return f"{uri}/health answered HTTP {e.code}: not an MLflow tracking server"
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            return f"no connection: {reason} (timeout {timeout_s:g} s)"
    if uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        while not folder.exists() and folder != folder.parent:  # created by the first write
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"folder {folder} is not writable"
    return None


def check_tracking(spec: JobSpec) -> None:
    """At launch: refuse a job whose MLflow store is unreachable (one line naming the key and
    the ways out), or warn when the job says tracking is optional (``reduce.mlflow.required``)."""
    if not spec.reduce.mlflow.enabled:
        return
    uri = tracking_uri(spec)
    why = unreachable(uri)
    if why is None:
        return
    if spec.reduce.mlflow.required:
        raise SpecError(f"reduce.mlflow.tracking_uri: MLflow store {uri} is unreachable ({why}); start it, fix "
                        f"the URI, or set reduce.mlflow.required=false to run now and log later with "
                        f"`skinhpc reduce --log-only`", key="reduce.mlflow.tracking_uri")
    log.warning("MLflow store %s is unreachable (%s); tracking is optional for this job: it runs, and its "
                "logging is recorded as failed until `skinhpc reduce --log-only` logs it", uri, why)


@contextmanager
def http_limits(retries: int, timeout_s: float) -> Iterator[None]:
    """MLflow's HTTP retries and per-request timeout for the calls inside, unless the user set
    them (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``/``_TIMEOUT``, which MLflow reads at each request)."""
    wanted = {RETRIES_ENV: str(retries), TIMEOUT_ENV: str(int(timeout_s))}
    ours = {k: v for k, v in wanted.items() if k not in os.environ}
    os.environ.update(ours)
    try:
        yield
    finally:
        for k in ours:
            os.environ.pop(k, None)
