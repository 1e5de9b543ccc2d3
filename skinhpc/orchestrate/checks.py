"""What the environment must provide before a job is launched: its data, weights and model.

Schema validation is pure (a spec validates without the data, in a test or on a laptop);
these checks look at this machine, once, at launch, before anything is written or submitted.
Each failure is a SpecError naming the key and the way out.
"""

from __future__ import annotations

from skinhpc.config import JobSpec, SpecError, plan_members

DOWNLOAD = "skinhpc data download ham10000 --to data/ham10000"
# model.name values skinhpc builds itself (skinhpc.model.net), not looked up in timm
OWN_MODELS = ("baseline_majority", "baseline_random", "small_cnn")


def check_environment(spec: JobSpec, where: str = "job") -> None:
    """Refuse a job whose data folders, weights file or timm model do not exist here.

    Members may differ (a sweep over ``model.name``), so every distinct member spec is checked.
    """
    try:
        _check(spec)
    except SpecError as e:
        raise SpecError(f"{where}: {e}", key=e.key) from None


def _check(spec: JobSpec) -> None:
    members = [m.spec(spec) for m in plan_members(spec)] or [spec]
    if not spec.data.sources:
        raise SpecError(f"data.sources: the job names no data; include a data fragment such as "
                        f"configs/data/ham10000.yaml (after `{DOWNLOAD}`)", key="data.sources")
    roots = {(i, s.resolve(src.root)) for s in members for i, src in enumerate(s.data.sources)}
    for i, root in sorted(roots):
        if not root.is_dir():
            raise SpecError(
                f"data.sources[{i}].root: data folder {root} does not exist. Get the data with "
                f"`{DOWNLOAD}` (then include configs/data/ham10000.yaml), check out beside a "
                f"../shared folder that holds data/ham10000, or point the root at your copy.",
                key=f"data.sources[{i}].root",
            )
    for m in {s.model.weights: s for s in members if s.model.pretrained == "file"}.values():
        path = m.resolve(m.model.weights or "")
        if not path.is_file():
            raise SpecError(f"model.weights: {path} does not exist (model.pretrained=file)", key="model.weights")
    names = sorted({s.model.name for s in members} - set(OWN_MODELS))
    if names:
        _check_timm_names(names)


def _check_timm_names(names: list[str]) -> None:
    import timm  # deferred: imports torch (seconds); only a launch needs the model registry

    for name in names:
        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('.')[0][:12]}*")[:5]
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise SpecError(f"model.name: {name!r} is not a timm model{hint}", key="model.name")

