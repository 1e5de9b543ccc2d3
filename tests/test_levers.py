"""The training levers of issue 25 as schema keys: train.sampler, train.mixup, train.swa, train.distill.

Each lever: off by default with every shipped member fingerprint unchanged, a changed member
fingerprint when on, its bad combinations refused naming both keys, its mechanism checked
against the formula, and a short member trained with it on real images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from skinhpc.config import (
    SpecError,
    changed_keys,
    from_dict,
    identity_view,
    load_spec,
    plan_members,
    with_overrides,
)
from skinhpc.data.dataset import EpochSampler, prior_weights
from skinhpc.train.averaging import WeightAverage, update_norms
from skinhpc.train.distill import distill_loss
from skinhpc.train.history import auc_score
from skinhpc.train.losses import Objective, build_loss, build_train_loss
from skinhpc.train.member import train_member
from skinhpc.train.mixing import build_mixup

LEVER_KEYS = {"sampler", "mixup", "swa", "distill"}
# job fingerprint and member fingerprints of shipped jobs, computed at 04724fd (before the levers
# existed) with every source root at a fixed path (the shipped_spec fixture)
PINNED = {
    "debug.yaml": ("075fafa3f0f2f43e", ["be3b7b4fb3539f51"]),
    "demo.yaml": ("5c71b6db1a5b919c", ["b7558cabd53721b2"]),
    "lite0_member.yaml": ("667712301747d5dc", ["64a283d1d8991c7d"]),
}


# --------------------------------------------------------------------------- schema
def _own_train_keys(path: Path) -> set[str]:
    """The train keys a job file sets itself (not its includes): the levers it chose."""
    raw = yaml.safe_load(path.read_text()) or {}
    return set(raw.get("train") or {})


def test_shipped_jobs_keep_their_fingerprints(repo: Path, shipped_job: str, shipped_spec) -> None:
    """The levers are off by default and out of every identity view while off (omit_default),
    so a shipped job's members keep the fingerprints their checkpoints carry; a job that sets a
    lever (cpu_best, chosen by the lever screen) has exactly that lever in its identity."""
    spec = load_spec(repo / "jobs" / shipped_job)
    chosen = LEVER_KEYS & _own_train_keys(repo / "jobs" / shipped_job)
    for m in plan_members(spec):
        assert LEVER_KEYS & set(identity_view(m.spec(spec), "member")["train"]) == chosen
    if shipped_job in PINNED:
        spec = shipped_spec(shipped_job)
        got = (spec.fingerprint(), sorted({m.spec(spec).member_fingerprint() for m in plan_members(spec)}))
        assert got == PINNED[shipped_job]


@pytest.mark.parametrize("key, value", [("train.sampler", "sqrt"), ("train.sampler", "balanced"),
                                        ("train.mixup.alpha", 0.4), ("train.mixup.cutmix_alpha", 1.0),
                                        ("train.swa.epochs", 2), ("train.distill.teacher", "results/t")])
def test_a_lever_on_is_another_member(tmp_path: Path, ham_root: Path, tiny_job, key: str, value: object) -> None:
    spec = tiny_job(tmp_path, ham_root, data={"split": {"method": "kfold", "folds": 2}})
    on = with_overrides(spec, {key: value})
    assert on.member_fingerprint() != spec.member_fingerprint()
    # named as changed: the key, or its section where the whole section was at its defaults
    # (then absent from the view: identity.changed_keys names the first key that differs)
    assert changed_keys(spec, on, "member") in ([key], [key.rsplit(".", 1)[0]])


@pytest.mark.parametrize("train, message", [
    ({"balanced_sampler": True, "sampler": "sqrt"}, r"train\.balanced_sampler: .*train\.sampler says sqrt"),
    ({"mixup": {"alpha": 0.2}, "loss": {"name": "focal"}}, r"train\.mixup: .*train\.loss\.name=focal"),
    ({"mixup": {"cutmix_alpha": 1.0}, "loss": {"name": "weighted_ce"}}, r"train\.mixup: .*weighted_ce"),
    ({"swa": {"epochs": 3}}, r"train\.swa\.epochs: 3 is more than .*train\.phases\[0\]\.epochs = 2"),
    ({"sampler": "inverse"}, r"train\.sampler: expected one of 'natural' \| 'balanced' \| 'sqrt'"),
    ({"mixup": {"prob": 0.0}}, r"train\.mixup\.prob: must be > 0"),
    ({"distill": {"weight": 0.0}}, r"train\.distill\.weight: must be > 0"),
])
def test_bad_lever_settings_are_refused_naming_the_keys(tmp_path: Path, ham_root: Path, tiny_job,
                                                        train: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        tiny_job(tmp_path, ham_root, train=train)
    assert "\n" not in str(err.value)


def test_balanced_sampler_is_sampler_balanced_and_a_clash_names_the_file(tmp_path: Path) -> None:
    """The bool stays (fingerprints of members trained with it): true draws what sampler: balanced
    draws; set beside sampler: sqrt, the job file is refused naming it and both keys."""
    from skinhpc.train.inputs import sampler_weights

    labels = np.repeat(np.arange(3), [40, 10, 5])
    old = from_dict({"name": "a", "train": {"balanced_sampler": True}})
    new = from_dict({"name": "b", "train": {"sampler": "balanced"}})
    np.testing.assert_array_equal(sampler_weights(old.train, labels), sampler_weights(new.train, labels))
    assert sampler_weights(from_dict({"name": "c"}).train, labels) is None
    job = tmp_path / "old.yaml"
    job.write_text("name: old\ntrain:\n  balanced_sampler: true\n  sampler: sqrt\n")
    with pytest.raises(SpecError, match=rf"{job.name}.*train\.balanced_sampler: .*train\.sampler says sqrt"):
        load_spec(job)


# --------------------------------------------------------------------------- mixup
def _mixer(**mixup: float):
    spec = from_dict({"name": "m", "train": {"mixup": mixup, "loss": {"label_smoothing": 0.0}}})
    return build_mixup(spec.train, 3)


@pytest.mark.parametrize("n", [1, 5, 32])
def test_mixup_blends_pixels_targets_and_metadata_with_one_permutation(n: int) -> None:
    np.random.seed(0)
    x0, meta0 = torch.randn(n, 3, 8, 8), torch.randn(n, 4)
    y = torch.arange(n) % 3
    x, target, meta, lam = _mixer(alpha=0.4).mix(x0.clone(), y, meta0.clone())
    assert 0 < lam < 1
    onehot = nn.functional.one_hot(y, 3).float()
    torch.testing.assert_close(x, lam * x0 + (1 - lam) * x0.flip(0))
    torch.testing.assert_close(target, lam * onehot + (1 - lam) * onehot.flip(0))
    torch.testing.assert_close(meta, lam * meta0 + (1 - lam) * meta0.flip(0))
    torch.testing.assert_close(target.sum(1), torch.ones(n))
    if n % 2:  # an odd batch's middle image is paired with itself: its own label
        torch.testing.assert_close(target[n // 2], onehot[n // 2])


@pytest.mark.parametrize("n", [1, 7, 32])
def test_cutmix_pastes_a_box_and_weights_labels_and_metadata_by_its_area(n: int) -> None:
    np.random.seed(1)
    x0 = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 16, 16).clone()
    meta0, y = torch.randn(n, 4), torch.arange(n) % 3
    x, target, meta, lam = _mixer(cutmix_alpha=1.0).mix(x0.clone(), y, meta0.clone())
    onehot = nn.functional.one_hot(y, 3).float()
    for i in range(n):
        j = n - 1 - i
        own = float((x[i] == i).float().mean())
        assert own == pytest.approx(lam if i != j else 1.0)  # the corrected lambda is the area kept
        assert set(x[i].unique().tolist()) <= {float(i), float(j)}
    torch.testing.assert_close(target, lam * onehot + (1 - lam) * onehot.flip(0))
    torch.testing.assert_close(meta, lam * meta0 + (1 - lam) * meta0.flip(0))


def test_mixup_off_by_prob_and_smoothing_equal_plain_ce() -> None:
    """A batch left unmixed (lambda 1) with Mixup's label smoothing gives the loss of
    nn.CrossEntropyLoss(label_smoothing) on the hard labels: one meaning for the key."""
    spec = from_dict({"name": "m", "train": {"mixup": {"alpha": 0.4, "prob": 1e-12},
                                             "loss": {"label_smoothing": 0.1}}})
    np.random.seed(0)
    logits, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    _, target, _, lam = build_mixup(spec.train, 3).mix(torch.zeros(6, 3, 2, 2), y, torch.zeros(6, 0))
    assert lam == 1.0
    soft = build_train_loss(spec.train, [2, 2, 2])(logits, target)
    hard = build_loss(spec.train.loss, [2, 2, 2])(logits, y)
    assert float(soft) == pytest.approx(float(hard), rel=1e-6)


# --------------------------------------------------------------------------- sampler
def test_sampler_draws_classes_by_the_chosen_prior() -> None:
    counts = np.array([900, 90, 10])
    labels = np.repeat(np.arange(3), counts)
    want = {"balanced": np.ones(3) / 3, "sqrt": np.sqrt(counts) / np.sqrt(counts).sum()}
    for kind, power in (("balanced", 1.0), ("sqrt", 0.5)):
        sampler = EpochSampler(len(labels), seed=3, weights=prior_weights(labels, power))
        drawn = []
        for epoch in range(20):
            sampler.set_epoch(epoch)
            drawn.extend(sampler)
        freq = np.bincount(labels[drawn], minlength=3) / len(drawn)
        sd = np.sqrt(want[kind] * (1 - want[kind]) / len(drawn))
        assert np.all(np.abs(freq - want[kind]) < 5 * sd), (kind, freq, want[kind])


def test_weighted_draw_is_torch_weighted_random_sampler_and_the_draw_it_replaced() -> None:
    """The order a balanced member trained on before is the order it trains on now (resume)."""
    labels = np.repeat(np.arange(3), [50, 20, 5])
    w = prior_weights(labels, 1.0)
    old = 1.0 / np.bincount(labels)[labels]
    np.testing.assert_allclose(w, old / old.sum())
    sampler = EpochSampler(len(labels), seed=7, weights=w)
    sampler.set_epoch(2)
    g = torch.Generator().manual_seed(7 * 7919 + 2)
    assert list(sampler) == torch.multinomial(torch.as_tensor(w, dtype=torch.double), len(labels), True,
                                              generator=g).tolist()


def test_weighted_sampler_under_accelerate_gives_each_process_its_own_batches() -> None:
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    labels = np.repeat(np.arange(3), [60, 30, 6])
    ids = list(range(len(labels)))

    def loader() -> DataLoader:
        sampler = EpochSampler(len(ids), seed=5, weights=prior_weights(labels, 0.5))
        return DataLoader(ids, batch_size=8, sampler=sampler, drop_last=True)

    whole = [b.tolist() for b in loader()]
    parts = [[b.tolist() for b in prepare_data_loader(loader(), num_processes=2, process_index=i,
                                                      put_on_device=False)] for i in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == len(whole) // 2
    assert parts[0] != parts[1]
    # step k: process 0 takes global batch 2k, process 1 batch 2k+1 -- one draw, dealt out
    assert [b for pair in zip(*parts, strict=True) for b in pair] == whole[: 2 * len(parts[0])]


# --------------------------------------------------------------------------- SWA
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.frozen = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 + 2, 2)

    def forward(self, x: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        h = self.frozen(self.norm(x)).mean((2, 3))
        return self.fc(torch.cat([h, meta], 1))


def test_swa_average_is_the_mean_of_the_snapshots_and_norms_are_reestimated() -> None:
    torch.manual_seed(0)
    net = _Net()
    avg = WeightAverage(net, epochs=3)
    snaps = []
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p))
        snaps.append({k: v.clone() for k, v in net.named_parameters()})
        avg.update(net)
    assert avg.count == 3
    for name, p in avg.module.named_parameters():
        torch.testing.assert_close(p, torch.stack([s[name] for s in snaps]).mean(0))

    # norm statistics: the plain mean over the batches; a frozen norm keeps the trained model's
    net.frozen.requires_grad_(False)
    net.frozen.running_mean.fill_(7.0)
    batches = [(torch.randn(4, 3, 5, 5) * 2 + torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1), torch.randn(4, 2))
               for _ in range(5)]
    update_norms(avg.module, batches, keep_from=net)
    x = torch.cat([b[0] for b in batches])
    torch.testing.assert_close(avg.module.norm.running_mean, x.mean((0, 2, 3)), atol=1e-5, rtol=0)
    want_var = torch.stack([b[0].var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(avg.module.norm.running_var, want_var, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(avg.module.frozen.running_mean, torch.full((3,), 7.0))
    assert avg.module.norm.momentum == net.norm.momentum  # update_bn put the momentum back

    # last.pt's copy: the average and whether it was judged
    again = WeightAverage(_Net(), epochs=3)
    again.load(avg.state())
    assert again.count == 3 and not again.judged
    torch.testing.assert_close(again.module.fc.weight, avg.module.fc.weight)


# --------------------------------------------------------------------------- members
def _member(prepared_tiny_job, tmp_path: Path, ham_root: Path, train: dict, **over):
    base = {"phases": [{"name": "all", "epochs": 2, "train": "all", "lr": 3e-3}], "batch_size": 16,
            "num_workers": 0, "augment": 0.3, "max_steps_per_epoch": 6}
    spec, paths = prepared_tiny_job(tmp_path, ham_root, subset=240, train={**base, **train}, **over)
    member = plan_members(spec)[0]
    train_member(spec, paths, member)
    mp = paths.member(member)
    hist, val = pd.read_csv(mp.history), pd.read_csv(mp.val)
    done = json.loads(mp.done.read_text())
    assert done["best_metric"] == pytest.approx(hist["val_auc"].max())
    auc = auc_score(val["label"].to_numpy(), val[["prob_benign", "prob_malignant"]].to_numpy())
    assert auc == pytest.approx(done["best_metric"], abs=1e-6)  # val.csv is best.pt's
    return spec, paths, mp, hist, done


@pytest.mark.parametrize("train", [
    {"mixup": {"alpha": 0.4, "cutmix_alpha": 1.0}, "loss": {"label_smoothing": 0.1}, "batch_size": 9},
    {"mixup": {"cutmix_alpha": 1.0, "prob": 0.5}, "batch_size": 7},
    {"sampler": "sqrt"},
], ids=["mixup+cutmix", "cutmix", "sqrt"])
def test_member_trains_with_the_lever(tmp_path: Path, ham_root: Path, prepared_tiny_job, train: dict) -> None:
    """Odd batch sizes, metadata fusion on: the mixed metadata reaches the model."""
    _, _, _, hist, done = _member(prepared_tiny_job, tmp_path, ham_root, train,
                                  model={"name": "resnet10t", "pretrained": "none",
                                         "metadata": {"enabled": True, "hidden": 8}})
    assert len(hist) == 2 and np.isfinite(hist["train_loss"]).all() and done["epochs"] == 2


def test_member_with_swa_judges_the_average_once_as_one_more_candidate(tmp_path: Path, ham_root: Path,
                                                                       prepared_tiny_job) -> None:
    train = {"phases": [{"name": "head", "epochs": 1, "train": "head", "lr": 3e-3},
                        {"name": "all", "epochs": 3, "train": "all", "lr": 3e-3}],
             "swa": {"epochs": 2}, "ema": {"enabled": True, "decay": 0.9}}
    spec, paths, mp, hist, done = _member(prepared_tiny_job, tmp_path, ham_root, train)
    assert list(hist["phase"]) == ["head", "all", "all", "all", "swa"]
    assert list(hist["epoch"]) == [0, 1, 2, 3, 4] and done["epochs"] == 4
    swa_row = hist.iloc[-1]
    assert np.isnan(swa_row["train_loss"]) and swa_row["seconds"] > 0 and np.isfinite(swa_row["val_auc"])
    last = torch.load(mp.last, weights_only=True)
    assert last["swa"]["judged"] and int(last["swa"]["model"]["n_averaged"]) == 2
    best = torch.load(mp.best, weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in last["swa"]["model"].items() if k != "n_averaged"}
    is_swa = all(torch.equal(best["model"][k], v) for k, v in averaged.items())
    assert is_swa == (done["best_epoch"] == 4)

    # the relaunch of an interrupted member (done.json lost) finds it judged: no second row
    mp.done.unlink()
    train_member(spec, paths, plan_members(spec)[0])
    assert len(pd.read_csv(mp.history)) == 5


# --------------------------------------------------------------------------- distillation
def test_distill_loss_is_tempered_kl_to_the_teacher() -> None:
    torch.manual_seed(0)
    logits, soft = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), 1)
    for t in (1.0, 2.0):
        q = torch.softmax(soft.log() / t, 1)  # p**(1/T) renormalised
        logp = torch.log_softmax(logits / t, 1)
        want = float((q * (q.log() - logp)).sum(1).mean()) * t * t
        assert float(distill_loss(logits, soft, t)) == pytest.approx(want, rel=1e-5)
    assert float(distill_loss(soft.log(), soft, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_probabilities_are_mixed_with_the_images() -> None:
    spec = from_dict({"name": "m", "data": {"split": {"method": "kfold", "folds": 2}},
                      "train": {"mixup": {"alpha": 0.4}, "distill": {"teacher": "t", "weight": 0.3}}})
    objective = Objective(spec.train, [3, 3], 2)
    np.random.seed(0)
    y, soft = torch.tensor([0, 1, 1, 0, 1]), torch.softmax(torch.randn(5, 2), 1)
    x, meta, (target, mixed) = objective.targets(torch.randn(5, 3, 4, 4), y, torch.zeros(5, 0), soft.clone())
    lam = float(target[0, 0])  # y[0] = 0 is paired with y[4] = 1: its target is [lam, 1 - lam]
    torch.testing.assert_close(mixed, lam * soft + (1 - lam) * soft.flip(0))
    logits = torch.randn(5, 2)
    want = build_train_loss(spec.train, [3, 3])(logits, target) + 0.3 * distill_loss(logits, mixed, 1.0)
    assert float(objective(logits, (target, mixed))) == pytest.approx(float(want), rel=1e-6)


KFOLD = {"split": {"method": "kfold", "folds": 2, "fractions": [0.7, 0.15, 0.15]}}
QUICK = {"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}], "batch_size": 16,
         "num_workers": 0, "max_steps_per_epoch": 3}


def test_student_trains_on_a_kfold_teachers_out_of_fold_probabilities(tmp_path: Path, ham_root: Path,
                                                                      prepared_tiny_job) -> None:
    from skinhpc.outputs.publish import reduce

    teacher, tpaths = prepared_tiny_job(tmp_path / "t", ham_root, subset=200, data=KFOLD, train=QUICK,
                                        reduce={"tta": ["identity"], "gate": 0.0, "onnx": False, "bootstrap": 0,
                                                "gradcam": 0, "mlflow": {"enabled": False}})
    for m in plan_members(teacher):
        train_member(teacher, tpaths, m)
    reduce(teacher, tpaths)
    oof = pd.read_csv(tpaths.predictions("val"))
    assert set(oof["fold"]) == {0, 1}

    student, spaths = prepared_tiny_job(tmp_path / "s", ham_root, subset=200, data=KFOLD,
                                        train={**QUICK, "distill": {"teacher": str(tpaths.root), "weight": 0.5,
                                                                    "temperature": 2.0}})
    member = plan_members(student)[1]
    train_member(student, spaths, member)
    done = json.loads(spaths.member(member).done.read_text())
    assert done["distilled"]["teacher"] == str(tpaths.root) and done["distilled"]["val_optimistic"]
    assert np.isfinite(pd.read_csv(spaths.member(member).history)["train_loss"]).all()

    # a teacher on other folds is refused naming both files, and the student's files stay as they were
    other, opaths = prepared_tiny_job(tmp_path / "o", ham_root, subset=200,
                                      data={"split": {**KFOLD["split"], "folds": 3}},
                                      train={**QUICK, "distill": {"teacher": str(tpaths.root)}})
    before = {p.name: p.read_bytes() for p in (opaths.manifest, opaths.splits)}
    with pytest.raises(ValueError, match=rf"{tpaths.splits} differs from {opaths.splits}"):
        train_member(other, opaths, plan_members(other)[0])
    assert {p.name: p.read_bytes() for p in (opaths.manifest, opaths.splits)} == before
    assert not opaths.member(0).done.exists()

    # a training image the teacher never scored is named
    first = plan_members(student)[0]
    lost = oof[oof["fold"] != first.spec(student).data.split.fold]["image_id"].iloc[0]
    oof[oof["image_id"] != lost].to_csv(tpaths.predictions("val"), index=False)
    with pytest.raises(ValueError, match=rf"predictions_val\.csv: no out-of-fold .* image {lost} "):
        train_member(student, spaths, first)
