"""What is finished in a job folder: the one owner of "member done", "prepare complete" and the
stage state records, so launch, the tasks, status and the reduce all mean the same thing.

Everything here is cheap enough for ``skinhpc launch`` on a 1,000-member job on a parallel
file system and imports no torch: one listing per folder, small JSON files, one manifest read.

* A member is done when its ``done.json`` is readable and names this very member: the same
  fingerprint (what its weights depend on), seed and index, and its ``best.pt`` is this member's
  readable checkpoint (checked from its stat while it is the file done.json stamped, read when
  not).  A done.json or best.pt copied in from another seed, sweep point or config, or a
  truncated best.pt, is not done (the member retrains; the reduce leaves it out).
* Prepare is complete when ``prepare.done.json`` was written for this manifest (its hash),
  this preprocessing (its hash), this cache folder and these source files (their sizes and
  mtimes: one stat an image), and every kept image is in the cache (one directory listing;
  cache files are renamed into place whole, so present means complete).
* ``state/<stage>.json`` records each task's state (running, done, failed, requeued) whatever
  executor ran it (``JobPaths.stage_state``; its last traceback: ``JobPaths.stage_error``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import submitit

from skinhpc.config import JobSpec, Member
from skinhpc.io.atomic import write_json_atomic
from skinhpc.io.layout import CachePaths, JobPaths
from skinhpc.io.member_identity import identity_problem

__all__ = ["identity_problem"]  # re-exported: its home is io.member_identity (no torch, no cycle)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- member done
def member_fingerprint(spec: JobSpec) -> str:
    """What a member's weights depend on (``spec`` is the member's own spec, ``member.spec(job)``):
    the fields the schema declares of member or cache identity (:mod:`skinhpc.config.identity`)."""
    return spec.member_fingerprint()


def member_identity(spec: JobSpec, member: Member) -> dict[str, Any]:
    """The keys done.json and the member's checkpoints carry to say whose they are."""
    return {"fingerprint": member_fingerprint(member.spec(spec)), "seed": member.seed, "member": member.index}


def _stamp(path: Path) -> dict[str, int] | None:
    """What says a file is still the very one written: size, mtime and ctime in ns (a copy, a
    replacement or any write changes ctime, which no user can set back), or None if absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def write_member_done(spec: JobSpec, paths: JobPaths, member: Member, **summary: Any) -> None:
    """Mark ``member`` done (the last file training writes); ``summary`` is kept alongside, and
    best.pt's stamp (:func:`_stamp`), so status can trust it from one stat."""
    mp = paths.member(member)
    write_json_atomic(mp.done, {**member_identity(spec, member), **summary, "best_pt": _stamp(mp.best)})


def member_done_problem(spec: JobSpec, paths: JobPaths, member: Member,
                        fingerprint: str | None = None) -> str | None:
    """Why ``member`` is not done with this config, or None when it is (``fingerprint``: the
    member's, when the caller has it already).

    Done means done.json names this member *and* best.pt is this member's readable checkpoint,
    the same check the reduce makes (:func:`skinhpc.io.checkpoint.member_checkpoint_problem`).
    That check reads the checkpoint (torch, ~0.1 s a member), so it runs only when best.pt's
    stat differs from the stamp done.json recorded at training's end: a 1,000-member status
    costs 1,000 stats while nothing was touched, and a truncated, replaced or copied-in best.pt
    (new size, mtime or ctime) is read and judged."""
    done = paths.member(member).done
    try:
        record = json.loads(done.read_text())
    except FileNotFoundError:
        return f"no {done} (training unfinished or failed)"
    except (OSError, ValueError) as e:
        return f"unreadable {done}: {e}"
    if not isinstance(record, dict):
        return f"{done}: not a JSON object"
    want = {"fingerprint": fingerprint, "seed": member.seed, "member": member.index} if fingerprint \
        else member_identity(spec, member)
    problem = identity_problem(record, want)
    if problem:
        return f"{done} is of another member or config: {problem}"
    return best_problem(paths, member, record, want)


def best_problem(paths: JobPaths, member: Member, record: dict[str, Any], want: dict[str, Any]) -> str | None:
    """Why best.pt is not the checkpoint done.json vouches for (see :func:`member_done_problem`)."""
    best = paths.member(member).best
    stamp = _stamp(best)
    if stamp is None:
        return f"{best}: missing, though {paths.member(member).done} says the member finished"
    if record.get("best_pt") == stamp:
        return None
    # only a best.pt changed since done.json was written is read, with torch
    from skinhpc.io.checkpoint import member_checkpoint_problem  # deferred: torch

    return member_checkpoint_problem(best, want)


def set_aside_rejected(spec: JobSpec, paths: JobPaths, member: Member) -> Path | None:
    """Move aside the folder of a member whose done.json names it but whose best.pt is not its
    checkpoint (truncated, replaced, copied in): it trains again from scratch, since a resume
    would keep last.pt's record of the best epoch and never write best.pt again.  Nothing is
    deleted; returns where the folder went (None when there was nothing to set aside)."""
    mp = paths.member(member)
    try:
        record = json.loads(mp.done.read_text())
    except (OSError, ValueError):
        return None
    want = member_identity(spec, member)
    if not isinstance(record, dict) or identity_problem(record, want):
        return None
    problem = best_problem(paths, member, record, want)
    if problem is None:
        return None
    aside = mp.root.with_name(f"{mp.root.name}.rejected-{time.strftime('%Y%m%d-%H%M%S')}")
    mp.root.rename(aside)
    log.warning("member %s: %s; its folder is moved aside to %s and it trains again", member.name, problem, aside)
    return aside


def member_done(spec: JobSpec, paths: JobPaths, member: Member) -> bool:
    return member_done_problem(spec, paths, member) is None


def done_members(spec: JobSpec, paths: JobPaths, members: Iterable[Member]) -> set[int]:
    """Indices of ``members`` that are done: one listing of members/, then a done.json read
    only for folders that have one (launch time on a large job)."""
    root = str(paths.members_dir)
    try:
        names = set(os.listdir(root))
    except OSError:
        return set()
    fingerprints: dict[str, str] = {}  # per sweep point and fold: the seeds of one point share it
    done = set()
    for m in members:
        if m.name not in names or not paths.member(m).done.exists():
            continue
        key = m.point
        if key not in fingerprints:
            fingerprints[key] = member_fingerprint(m.spec(spec))
        if member_done_problem(spec, paths, m, fingerprints[key]) is None:
            done.add(m.index)
    return done


def clean_stale_writes(folder: Path) -> list[Path]:
    """Remove the temporary files of writes that were killed before their rename
    (``.last.pt.*.tmp`` and the like): called on resume, when no other writer can be active."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


# --------------------------------------------------------------------------- prepare complete
def _manifest_rows(manifest: Path) -> list[tuple[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return [(r["image_id"], r["path"]) for r in csv.DictReader(f)]


def _rows_hash(rows: list[tuple[str, str]]) -> str:
    text = "\n".join(f"{i}\t{p}" for i, p in rows)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def manifest_hash(manifest: Path) -> str:
    """Identity of the image list (ids and files), so a cache or shard report of an older
    manifest in the same job folder is never taken for this one's."""
    return _rows_hash(_manifest_rows(manifest))


def sources_stamp(spec: JobSpec, rows: list[tuple[str, str]]) -> str:
    """Hash of every manifest image's source size and mtime (one stat each): an image replaced
    in place after the cache was built changes it, and the prepare stage runs again (the cache
    rebuilds the entries whose bytes changed).

    Nothing cheaper says the same: rewriting a file in place changes its own inode only (no
    folder's mtime, no metadata file), so a stat per image is the least evidence there is. Its
    cost is kept to the stat: ``spec.resolve`` runs once per source folder, not once per image
    (building 3,333 ``Path`` objects cost more than stat-ing them)."""
    folders: dict[str, str] = {}
    h = hashlib.sha256()
    for image_id, path in rows:
        head, name = os.path.split(path)
        if head not in folders:
            folders[head] = str(spec.resolve(head or "."))
        try:
            st = os.stat(os.path.join(folders[head], name))
            h.update(f"{image_id}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{image_id}\tmissing\n".encode())
    return h.hexdigest()[:16]


def prepare_problem(spec: JobSpec, paths: JobPaths) -> str | None:
    """Why the prepare stage must (re)run, or None when its outputs are complete for this spec."""
    cache_dir = spec.cache_dir  # its name is the preprocess hash: one walk of the schema, not three
    try:
        done = json.loads(paths.prepare_done.read_text())
        if not isinstance(done, dict):
            return f"{paths.prepare_done}: not a JSON object"
        if done.get("preprocess_hash") != cache_dir.name:
            return f"{paths.prepare_done}: written for other preprocessing"
        if Path(done.get("cache_dir", "")) != cache_dir:
            return f"{paths.prepare_done}: written for cache {done.get('cache_dir')}, not {cache_dir}"
        rows = _manifest_rows(paths.manifest)
        if done.get("manifest_hash") != _rows_hash(rows):
            return f"{paths.prepare_done}: written for another {paths.manifest}"
        skipped = {s["image_id"] if isinstance(s, dict) else str(s) for s in done.get("skipped") or []}
        if done.get("sources_stamp") != sources_stamp(spec, rows):
            return (f"{paths.prepare_done}: a source image changed (size or time), or was added or "
                    f"removed, since the cache was built")
    except FileNotFoundError as e:
        return f"{e.filename}: missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{paths.prepare_done}: unreadable ({e})"
    try:
        cached = set(os.listdir(cache_dir))
    except OSError:
        return f"{cache_dir}: cache folder missing"
    cache = CachePaths(cache_dir)
    missing = [i for i, _ in rows if i not in skipped and cache.entry(i).name not in cached]
    if missing:
        return f"{cache_dir}: {len(missing)} kept image(s) not cached, e.g. {missing[:3]}"
    return None


def prepare_complete(spec: JobSpec, paths: JobPaths) -> bool:
    """The prepare stage can be skipped (see :func:`prepare_problem`)."""
    return prepare_problem(spec, paths) is None


# --------------------------------------------------------------------------- stage records
def read_state(paths: JobPaths, stage: str) -> dict[str, Any]:
    try:
        return json.loads(paths.stage_state(stage).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _job_id() -> str | None:
    try:
        return str(submitit.JobEnvironment().job_id)
    except RuntimeError:
        return os.environ.get("SLURM_JOB_ID")


def record(paths: JobPaths, stage: str, state: str, **extra: Any) -> None:
    """Update a stage's state file; earlier keys (requeues, attempts) are kept."""
    data = read_state(paths, stage)
    data.update(extra)
    data.update(state=state, updated=time.time(), host=socket.gethostname(), pid=os.getpid())
    job_id = _job_id()
    if job_id:
        data["job_id"] = job_id
    write_json_atomic(paths.stage_state(stage), data)
