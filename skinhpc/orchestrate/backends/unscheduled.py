"""What the backends without a scheduler (local, debug) answer alike: no site to probe, no
scripts to show, arrays bounded only by the job's own ``cluster.max_array_size``."""

from __future__ import annotations

from skinhpc.config import JobSpec
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.plan import DEFAULT_MAX_ARRAY_SIZE, SubmissionPlan


class Unscheduled:
    """The three protocol methods a backend running on this machine has nothing to add to."""

    def max_array_size(self, spec: JobSpec) -> int:
        return spec.cluster.max_array_size or DEFAULT_MAX_ARRAY_SIZE

    def check(self, spec: JobSpec) -> None:
        return None

    def scripts(self, spec: JobSpec, paths: JobPaths, plan: SubmissionPlan) -> list[tuple[str, str]]:
        return []
