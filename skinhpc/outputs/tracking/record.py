"""Whether a job's results are mirrored in MLflow: ``state/mlflow.json``, beside the stage records.

The reduce commits ``ensemble/`` first and logs it afterwards, so a store that is down costs the
mirror, never the results.  The outcome goes here rather than into ``ensemble/`` (which stays
byte-identical when the logging is retried): ``state`` is ``logged`` (with ``run_id``) or
``failed`` (with ``error``), and ``uri`` names the store.  ``skinhpc status`` and ``skinhpc reduce``
read :func:`logging_problem`; ``skinhpc reduce --log-only`` retries from the committed files.
"""

from __future__ import annotations

from skinhpc.io.layout import JobPaths
from skinhpc.io.state import read_state, record

STAGE = "mlflow"


def record_logged(paths: JobPaths, uri: str, run_id: str) -> None:
    record(paths, STAGE, "logged", uri=uri, run_id=run_id, error=None)


def record_failed(paths: JobPaths, uri: str, error: str) -> None:
    record(paths, STAGE, "failed", uri=uri, error=error)


def forget(paths: JobPaths) -> None:
    """A reduce that does not log (``reduce.mlflow.enabled: false``) leaves no record of an
    earlier one's logging: it would describe results that are gone."""
    paths.stage_state(STAGE).unlink(missing_ok=True)


def logged_run(paths: JobPaths) -> str | None:
    """The parent run id of the last successful logging, or None."""
    st = read_state(paths, STAGE)
    return st.get("run_id") if st.get("state") == "logged" else None


def logging_problem(paths: JobPaths) -> str | None:
    """One line for a job whose results are complete but not in MLflow, with the way to retry;
    None when the last logging succeeded or none was tried."""
    st = read_state(paths, STAGE)
    if st.get("state") != "failed":
        return None
    return (f"MLflow logging to {st.get('uri')} failed ({st.get('error')}); ensemble/ is complete, "
            f"retry with `skinhpc reduce --log-only {paths.root}`")
