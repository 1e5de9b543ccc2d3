"""The job folder, checked: ``<results_dir>/<name>`` must be a folder strictly inside
results_dir, whatever the name says.

The schema restricts job names too; this is the check at the path level, where it
matters: a name of ``..``, ``.``, ``a/../..`` or an absolute path would otherwise put
job.yaml, members/ and a ``--force-new`` rename in results_dir itself or above it.
"""

from __future__ import annotations

import os
from pathlib import Path

from skinhpc.config import JobSpec, SpecError
from skinhpc.io.layout import JobPaths


def inside(path: str | Path, parent: str | Path) -> bool:
    """``path`` is strictly below ``parent``, both lexically and once symlinks are resolved."""
    p, q = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(parent))
    if os.path.commonpath([p, q]) != q or p == q:
        return False
    rp, rq = os.path.realpath(p), os.path.realpath(q)
    return rp != rq and not os.path.commonpath([rp, rq]) == rp  # not the parent, nor above it


def job_paths(spec: JobSpec) -> JobPaths:
    """The job's :class:`JobPaths`, refused (SpecError naming ``name``) unless its folder is
    strictly inside ``results_dir``."""
    parent = spec.results_root
    root = Path(parent) / spec.name
    if not spec.name or Path(spec.name).name != spec.name or not inside(root, parent):
        raise SpecError(f"name: {spec.name!r} does not name a folder inside results_dir ({parent}); "
                        f"use one plain folder name such as 'exp1'")
    return JobPaths(spec.job_dir)
