"""Picklable task callables the executors run: prepare, one member, reduce.

A task pickles only the job folder's path and re-reads ``job.yaml`` where it runs,
so a requeued or relaunched task always sees the resolved spec on disk, never a stale
copy frozen into a pickle, and the pickle stays tiny for 1,000-task arrays.

Each task records its own state in ``<job>/state/<stage>.json`` (running, done,
failed, requeues) and, on failure, the traceback (``members/<k>/error.txt`` for a
member, ``state/<stage>.error.txt`` otherwise) before re-raising: ``skinhpc status``
reads these the same way whatever executor ran the task.

``python -m skinhpc.orchestrate.worker drive JOB_DIR`` is the local executor's detached driver;
``python -m skinhpc.orchestrate.worker member JOB_DIR INDEX`` is what ``accelerate launch`` runs
in every process of a multi-GPU member.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from skinhpc.config import JobSpec, Member, load_spec, member_at
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.io.lock import REDUCE_LOCK, job_lock
from skinhpc.io.state import member_done, prepare_complete, read_state, record
from skinhpc.orchestrate.processes import start_time
from skinhpc.train.signals import checkpoint_now

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- job folder
def batch_logging() -> None:
    """Plain INFO lines in the task's log (submitit captures stderr); a no-op if configured."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def load_job(job_dir: str | Path) -> tuple[JobSpec, JobPaths]:
    """The resolved spec and paths of a launched job (job.yaml is the single source)."""
    batch_logging()
    paths = JobPaths(Path(job_dir))
    if not paths.job_yaml.exists():
        raise FileNotFoundError(f"{paths.job_yaml}: no job.yaml; launch the job first")
    return load_spec(paths.job_yaml), paths


def run_recorded(paths: JobPaths, stage: str, fn: Any, *args: Any) -> Any:
    """Run a stage body: state running -> done, or traceback file + failed + re-raise.

    The one place a stage's state is recorded, whoever runs it (a batch task, the debug
    backend, a manual ``skinhpc reduce``). A start after a checkpoint counts the requeue:
    only then has it really happened (submitit may decide not to requeue after all, e.g.
    timed out too many times). The exit submitit makes after requeueing leaves the state
    ``requeued`` (shown as pending), not ``failed`` with ``SystemExit: -1``; an interrupt
    (``skinhpc cancel``, Ctrl-C) is ``cancelled``.
    """
    err = paths.stage_error(stage)
    before = read_state(paths, stage)
    attempts = int(before.get("attempts", 0)) + 1
    requeues = int(before.get("requeues", 0)) + (before.get("state") == "requeued")
    now = time.time()
    # the first attempt's start survives requeues and resumes (status's elapsed time); a stage
    # that finished and runs again starts afresh
    first = before.get("first_started") if before.get("state") not in (None, "done") else None
    # pid (record's) and start time: the process's identity, for liveness, busy and cancel
    record(paths, stage, "running", attempts=attempts, requeues=requeues, started=now,
           first_started=first or now, pid_start=start_time(os.getpid()), spec_fingerprint=None)
    try:
        out = fn(*args)
    except SystemExit as e:
        if read_state(paths, stage).get("state") == "requeued":
            log.info("%s: requeued, exiting until the next attempt", stage)
            raise
        _record_failure(paths, stage, err, e)
        raise
    except KeyboardInterrupt:
        record(paths, stage, "cancelled", error="interrupted (skinhpc cancel or Ctrl-C)", ended=time.time())
        raise
    except BaseException as e:
        _record_failure(paths, stage, err, e)
        raise
    if err.exists():
        err.unlink()
    record(paths, stage, "done", ended=time.time())
    return out


def _record_failure(paths: JobPaths, stage: str, err: Path, e: BaseException) -> None:
    tb = traceback.format_exc()
    write_text_atomic(err, tb)
    last = tb.strip().splitlines()[-1] if tb.strip() else repr(e)
    record(paths, stage, "failed", error=last, ended=time.time())
    log.error("%s failed: %s (traceback in %s)", stage, last, err)


# --------------------------------------------------------------------------- prepare
class PrepareTask:
    """The prepare stage: ``all`` in one task, or ``tables`` -> ``shard`` array -> ``finalize``."""

    def __init__(self, job_dir: str | Path, step: str = "all") -> None:
        if step not in ("all", "tables", "shard", "finalize"):
            raise ValueError(f"PrepareTask step {step!r}: expected all, tables, shard or finalize")
        self.job_dir = str(job_dir)
        self.step = step

    def __call__(self, shard: int | None = None) -> str:
        """``shard``: the shard step's item; None in a SLURM array, where it is the array task id."""
        if shard is None:
            shard = int(submitit.JobEnvironment().array_task_id) if self.step == "shard" else 0
        spec, paths = load_job(self.job_dir)
        if self.step in ("all", "tables") and prepare_complete(spec, paths):
            record(paths, "prepare", "done", skipped=True)
            log.info("prepare: already complete, skipped")
            return "skipped"
        from skinhpc.data import prepare as prep  # deferred: keeps torch out of launch

        stage = "prepare" if self.step != "shard" else f"prepare-shard-{shard}"

        def body() -> None:
            if self.step in ("all", "tables"):
                prep.prepare_tables(spec, paths)
            if self.step == "all":
                prep.build_cache(spec, paths, shard=0, num_shards=1)
            if self.step == "shard":
                prep.build_cache(spec, paths, shard=shard, num_shards=spec.preprocess.shards)
            if self.step in ("all", "finalize"):
                prep.finalize(spec, paths)

        run_recorded(paths, stage, body)
        return "done"


# --------------------------------------------------------------------------- train
class MemberTask(submitit.helpers.Checkpointable):
    """One ensemble member. On preemption or time-out submitit calls :meth:`checkpoint`
    (in the training process, from its USR2 handler), which has training write last.pt
    (``skinhpc.train.signals.checkpoint_now``; it also writes it every epoch) and requeues this
    same task; training resumes from last.pt by itself."""

    def __init__(self, job_dir: str | Path, tasks: list[int] | None = None) -> None:
        self.job_dir = str(job_dir)
        # array submission: member index of each array task (see backends.slurm.submit_array)
        self.tasks = list(tasks) if tasks is not None else None

    def _index(self, index: int | None) -> int:
        if index is not None:
            return index
        if self.tasks is None:
            raise TypeError("MemberTask needs a member index outside an array submission")
        return self.tasks[int(submitit.JobEnvironment().array_task_id)]

    def _member(self, index: int) -> tuple[JobSpec, JobPaths, Member]:
        spec, paths = load_job(self.job_dir)
        try:
            member = member_at(spec, index)  # its own spec validated, no other member's
        except IndexError as e:
            raise IndexError(f"{paths.job_yaml}: {e}") from None
        return spec, paths, member

    def __call__(self, index: int | None = None) -> str:
        index = self._index(index)
        spec, paths, member = self._member(index)
        stage = f"member-{index}"
        if member_done(spec, paths, member):
            record(paths, stage, "done", skipped=True)
            return "skipped"
        run_recorded(paths, stage, _train, spec, paths, member)
        return "done"

    def checkpoint(self, index: int | None = None) -> submitit.helpers.DelayedSubmission:  # type: ignore[override]
        given = index
        try:
            index = self._index(index)
            _, paths, member = self._member(index)
            # same process as the training loop: last.pt is written before the requeue
            checkpoint_now()
            # counted by run_recorded when the requeued task starts: submitit may still refuse
            record(paths, f"member-{index}", "requeued")
        except Exception:  # the requeue matters more than the bookkeeping
            log.exception("member %s: could not record the requeue", index)
        if given is None:  # an array task: the requeued task finds its member the same way
            return submitit.helpers.DelayedSubmission(MemberTask(self.job_dir, self.tasks))
        return submitit.helpers.DelayedSubmission(MemberTask(self.job_dir), given)


def accelerate_launch() -> list[str]:
    """``accelerate launch`` of the Python running this task: the script beside it (a venv run
    as ``.venv/bin/python -m ...`` is not on PATH, so ``shutil.which`` misses it), else the
    module through this interpreter."""
    script = Path(sys.executable).parent / "accelerate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "launch"]
    return [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> int:
    """A TCP port free on this node now, for the member's process group: two multi-GPU members
    on one node would both take Accelerate's default 29500 (EADDRINUSE). Chosen here rather
    than with ``--main_process_port 0``, which Accelerate honours only from 1.7 (setup.cfg
    allows 1.5)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _train(spec: JobSpec, paths: JobPaths, member: Member) -> None:
    """In this process for 0-1 GPU; ``accelerate launch`` on this node for 2+ GPUs.

    One SLURM task per member (tasks_per_node=1) that starts G processes itself keeps
    the member a single array task: requeue, status and logs stay per member, and
    Accelerate owns the process group instead of SLURM's srun layout.
    """
    gpus = spec.cluster.gpus_per_member
    if gpus > 1 and "LOCAL_RANK" not in os.environ:
        cmd = [
            *accelerate_launch(), "--num_processes", str(gpus), "--num_machines", "1",
            "--main_process_port", str(free_port()),
            "--multi_gpu", "-m", "skinhpc.orchestrate.worker", "member", str(paths.root), str(member.index),
        ]
        log.info("member %s: %s", member.index, " ".join(cmd))
        subprocess.run(cmd, check=True)
        return
    from skinhpc.train.member import train_member  # deferred: keeps torch out of launch

    logger = _live_logger(spec, paths, member)
    if logger is None:
        train_member(spec, paths, member)
        return
    try:
        train_member(spec, paths, member, on_epoch=logger)
    except SystemExit:  # requeued: the next attempt reopens the same run and goes on logging
        raise
    except KeyboardInterrupt:
        logger.close("KILLED")
        raise
    except BaseException:
        logger.close("FAILED")
        raise
    logger.close("FINISHED")


def _live_logger(spec: JobSpec, paths: JobPaths, member: Member) -> Any:
    """The member's live MLflow epoch logger (:func:`skinhpc.outputs.tracking.members.live_logger`):
    only with a tracking server, never with the SQLite default (the reduce is its one writer),
    and only in the main process of a multi-process member."""
    if os.environ.get("RANK", "0") != "0" or member_done(spec, paths, member):
        return None
    from skinhpc.outputs.tracking.members import live_logger  # deferred: MLflow in tasks only

    return live_logger(spec, paths, member)


# --------------------------------------------------------------------------- reduce
# How long a batch reduce waits for the reduce lock: a manual `skinhpc reduce` holds it for as
# long as its reduce takes.
REDUCE_LOCK_WAIT_S = 900.0


class ReduceTask:
    """Ensemble, thresholds on validation, test metrics, report; decides with min_members.

    Runs under the job's reduce lock, as the manual ``skinhpc reduce`` does, so two reduces
    never write ``ensemble/`` at once: it waits up to ``lock_wait_s`` for a holder (a manual
    reduce) and then fails, recorded, naming it. It leaves the job lock alone, so ``skinhpc
    cancel`` can stop it.
    """

    def __init__(self, job_dir: str | Path, lock_wait_s: float = REDUCE_LOCK_WAIT_S) -> None:
        self.job_dir = str(job_dir)
        self.lock_wait_s = lock_wait_s

    def __call__(self) -> str:
        spec, paths = load_job(self.job_dir)
        from skinhpc.outputs.publish import reduce  # deferred: keeps torch out of launch

        def locked() -> Any:
            with job_lock(paths, "reduce", wait_s=self.lock_wait_s, name=REDUCE_LOCK):
                return reduce(spec, paths)

        run_recorded(paths, "reduce", locked)
        # which settings ensemble/ was computed from: status says "done" only for job.yaml's own
        record(paths, "reduce", "done", spec_fingerprint=spec.fingerprint())
        return "done"
