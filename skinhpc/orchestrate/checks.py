"""What the environment must provide before a job is launched: its data, weights and model.

Schema validation is pure (a spec validates without the data, in a test or on a laptop);
these checks look at this machine, once, at launch, before anything is written or submitted.
Each failure is a SpecError naming the key and the way out.
"""

from __future__ import annotations

from skinhpc.config import JobSpec, Member, SpecError, plan_members
from skinhpc.model.names import timm_names, unknown_timm_name
from skinhpc.orchestrate.backends import Backend, backend_for
from skinhpc.outputs.tracking.probe import check_tracking

DOWNLOAD = "skinhpc data download ham10000 --to data/ham10000"
# source kinds `skinhpc data download` fetches (skinhpc.data.download.DATASETS, not imported: pandas)
DOWNLOADABLE = ("ham10000", "isic2019", "isic2020")
# model.name values skinhpc builds itself (skinhpc.model.net), not looked up in timm
OWN_MODELS = ("baseline_majority", "baseline_random", "small_cnn")


def check_environment(spec: JobSpec, where: str = "job", members: list[Member] | None = None,
                      backend: Backend | None = None) -> None:
    """Refuse a job whose data folders, weights file or timm model do not exist here, or that
    its backend's site cannot run (SLURM: more GPUs a member than a node has, from ``sinfo``).

    Members may differ (a sweep over ``model.name``), so every distinct member spec of the
    launch's plan (``members``, validated once; planned here when not given) is checked.
    """
    try:
        _check(spec, plan_members(spec) if members is None else members)
        (backend or backend_for(spec.cluster.executor)).check(spec)
    except SpecError as e:
        raise SpecError(f"{where}: {e}", key=e.key) from None


def _check(spec: JobSpec, planned: list[Member]) -> None:
    members = list({id(s): s for s in (m.spec(spec) for m in planned)}.values()) or [spec]
    if not spec.data.sources:
        raise SpecError(f"data.sources: the job names no data; include a data fragment such as "
                        f"configs/data/ham10000.yaml (after `{DOWNLOAD}`)", key="data.sources")
    # resolved once per distinct (index, base, root), not once per member (a sweep shares its data)
    named = {(i, s.base_dir, src.root): s for s in members for i, src in enumerate(s.data.sources)}
    roots = {(i, s.resolve(root), s.data.sources[i].kind) for (i, _, root), s in named.items()}
    for i, root, kind in sorted(roots):
        if not root.is_dir():
            get = (f"`skinhpc data download {kind} --to {root}` (then include configs/data/{kind}.yaml)"
                   if kind in DOWNLOADABLE else "the publisher's files")
            raise SpecError(
                f"data.sources[{i}].root: data folder {root} does not exist. Get the data with "
                f"{get}, check out beside a ../shared folder that holds data/ham10000, or point the "
                f"root at your copy.",
                key=f"data.sources[{i}].root",
            )
    for m in {s.model.weights: s for s in members if s.model.pretrained == "file"}.values():
        path = m.resolve(m.model.weights or "")
        if not path.is_file():
            raise SpecError(f"model.weights: {path} does not exist (model.pretrained=file)", key="model.weights")
    names = sorted({s.model.name for s in members} - set(OWN_MODELS))
    if names:
        _check_timm_names(names)
    check_tracking(spec)  # the MLflow store, probed once (reduce.mlflow.required: refuse, else warn)


def _check_timm_names(names: list[str]) -> None:
    known = timm_names()  # from a cache keyed on the installed timm: no torch in the launch
    for name in names:
        problem = unknown_timm_name(name, known)
        if problem:
            raise SpecError(f"model.name: {problem}", key="model.name")
