"""The one description of a job's pipeline: which stages, in which order, each waiting for what.

prepare (one task, or tables -> shard array -> finalize, each only if the one before
succeeded) -> train arrays of at most MaxArraySize members, only if prepare succeeded ->
one reduce once every train array has ended however it ended, so it runs even when
members fail and decides itself with ``reduce.min_members``.

The plan (:mod:`~skinhpc.orchestrate.plan`) holds this list; the backends
(:mod:`skinhpc.orchestrate.backends`) only run it, and none of them knows the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinhpc.config import JobSpec, Member
from skinhpc.orchestrate.stages import MemberTask, PrepareTask, ReduceTask


@dataclass(frozen=True)
class Step:
    """One submission: a single task, or an array of tasks over ``array``'s items."""

    name: str  # the launches.jsonl stage: prepare, prepare-shards, finalize, train, reduce
    resources: str  # which plan.resources() set: prepare, train or reduce
    task: Any  # picklable callable from stages; an array task is called with its item,
    #            or with nothing on SLURM, where it finds its item from the array task id
    array: tuple[int, ...] | None = None
    parallel: int = 1  # array tasks at once
    after: tuple[int, ...] = ()  # indices of the steps it waits for
    need: str = "ok"  # "ok": all of them succeeded; "any": all of them ended


def pipeline(spec: JobSpec, prepare: str, shards: int, arrays: list[list[Member]],
             job_dir: str | Path) -> list[Step]:
    """The steps of this launch, in an order where every step comes after what it waits for:
    ``prepare`` is skip, single or sharded (over ``shards``), then one train step per array."""
    steps: list[Step] = []
    if prepare == "single":
        steps.append(Step("prepare", "prepare", PrepareTask(job_dir, "all")))
    elif prepare == "sharded":
        items = tuple(range(shards))
        steps.append(Step("prepare", "prepare", PrepareTask(job_dir, "tables")))
        steps.append(Step("prepare-shards", "prepare", PrepareTask(job_dir, "shard"), array=items,
                          parallel=shards, after=(0,)))
        steps.append(Step("finalize", "prepare", PrepareTask(job_dir, "finalize"), after=(1,)))
    prepared = (len(steps) - 1,) if steps else ()
    for chunk in arrays:
        tasks = tuple(m.index for m in chunk)
        steps.append(Step("train", "train", MemberTask(job_dir, list(tasks)), array=tasks,
                          parallel=max(1, spec.cluster.array_parallelism), after=prepared))
    trains = tuple(i for i, s in enumerate(steps) if s.name == "train")
    steps.append(Step("reduce", "reduce", ReduceTask(job_dir), after=prepared + trains, need="any"))
    return steps


def may_start(step: Step, ended: dict[int, bool]) -> bool:
    """For backends that order steps themselves: ``ended`` maps a finished step to its success."""
    return all(ended[i] for i in step.after) if step.need == "ok" else all(i in ended for i in step.after)
