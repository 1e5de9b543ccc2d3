"""One member end to end on real shared images: it learns, writes its files, skips when done."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from skinhpc import runtime
from skinhpc.config import plan_members
from skinhpc.data import prepare
from skinhpc.ensemble.inference import gather_members
from skinhpc.io.layout import JobPaths
from skinhpc.io.state import done_members, member_done_problem, member_identity, write_member_done
from skinhpc.model.net import build_model, checkpoint_meta, load_checkpoint_model
from skinhpc.train.member import HISTORY_COLUMNS, auc_score, train_member


def test_tiny_model_learns_and_beats_majority(tmp_path: Path, ham_root: Path, prepared_tiny_job) -> None:
    train = {"phases": [{"name": "all", "epochs": 4, "train": "all", "lr": 3e-3}], "batch_size": 32,
             "num_workers": 0, "augment": 0.0}
    spec, paths = prepared_tiny_job(tmp_path / "cnn", ham_root, model={"name": "small_cnn", "pretrained": "none"},
                                     train=train)
    member = plan_members(spec)[0]
    train_member(spec, paths, member)
    mp = paths.member(member)
    for f in (mp.spec_json, mp.best, mp.last, mp.history, mp.val, mp.test, mp.done):
        assert f.exists(), f
    hist = pd.read_csv(mp.history)
    assert list(hist.columns) == HISTORY_COLUMNS and len(hist) == 4
    val = pd.read_csv(mp.val)
    assert list(val.columns) == ["image_id", "label", "prob_benign", "prob_malignant"]
    table = prepare.load_table(spec, paths)
    assert sorted(val["image_id"]) == sorted(table[table["split"] == "val"]["image_id"])
    assert (val[["prob_benign", "prob_malignant"]].sum(axis=1) - 1).abs().max() < 1e-5
    auc = auc_score(val["label"].to_numpy(), val[["prob_benign", "prob_malignant"]].to_numpy())
    done = json.loads(mp.done.read_text())
    assert done["best_metric"] == pytest.approx(hist["val_auc"].max())
    assert auc == pytest.approx(done["best_metric"], abs=1e-6)  # val.csv comes from the best checkpoint

    # best.pt loads back for the member's spec and gives the probabilities of val.csv
    model = load_checkpoint_model(mp.best, member.spec(spec))
    assert sum(p.numel() for p in model.parameters()) > 0

    # the majority baseline on the same data: a constant score, AUC 0.5
    bspec, bpaths = prepared_tiny_job(tmp_path / "base", ham_root, model={"name": "baseline_majority"},
                                       train={**train, "phases": [{"name": "all", "epochs": 1, "lr": 1e-3}]})
    train_member(bspec, bpaths, plan_members(bspec)[0])
    bval = pd.read_csv(bpaths.member(0).val)
    base_auc = auc_score(bval["label"].to_numpy(), bval[["prob_benign", "prob_malignant"]].to_numpy())
    train_frac = (table[table["split"] == "train"]["label"] == 1).mean()
    assert bval["prob_malignant"].iloc[0] == pytest.approx(train_frac, abs=0.02)
    assert auc > 0.65 and auc > base_auc + 0.1, (auc, base_auc)

    # relaunch: a finished member with the same config is skipped (files untouched)
    before = mp.done.stat().st_mtime_ns, mp.best.stat().st_mtime_ns
    train_member(spec, paths, member)
    assert (mp.done.stat().st_mtime_ns, mp.best.stat().st_mtime_ns) == before


def test_channels_last_is_how_a_member_trains_not_what_it_learns(tmp_path: Path, ham_root: Path,
                                                                 prepared_tiny_job) -> None:
    """train.channels_last (the default) trains in NHWC: the checkpoint's convolution weights are
    stored that way; switched off they are NCHW. The member's identity is the same and what it
    learns agrees to float rounding (val probabilities), so the switch is run-only."""
    train = {"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}], "max_steps_per_epoch": 3}
    runs = {}
    for on in (True, False):
        spec, paths = prepared_tiny_job(tmp_path / str(on), ham_root, subset=160,
                                        train={**train, "channels_last": on})
        member = plan_members(spec)[0]
        train_member(spec, paths, member)
        weights = torch.load(paths.member(member).last, map_location="cpu", weights_only=False)["model"]
        convs = [w for w in weights.values() if w.ndim == 4 and w.shape[-1] > 1 and w.shape[1] > 1]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) == on for w in convs)
        assert all(w.is_contiguous() != on for w in convs)
        runs[on] = (member_identity(spec, member), pd.read_csv(paths.member(member).val))
    assert runs[True][0] == runs[False][0]
    on, off = runs[True][1], runs[False][1]
    assert list(on["image_id"]) == list(off["image_id"])
    diff = (on["prob_malignant"] - off["prob_malignant"]).abs().max()
    assert 0 <= diff < 1e-3, diff


def test_bad_label_named(tmp_path: Path, ham_root: Path, prepared_tiny_job) -> None:
    spec, paths = prepared_tiny_job(tmp_path, ham_root, subset=60,
                                     model={"name": "small_cnn", "pretrained": "none"})
    man = pd.read_csv(paths.manifest)
    bad_id = man["image_id"].iloc[3]
    man.loc[3, "label"] = 7
    man.to_csv(paths.manifest, index=False)
    with pytest.raises(ValueError, match=bad_id):
        train_member(spec, paths, plan_members(spec)[0])


def test_augmentation_and_order_depend_only_on_seed_epoch_index(tmp_path: Path, ham_root: Path,
                                                                 prepared_tiny_job) -> None:
    from skinhpc.data.dataset import EpochSampler, SkinDataset

    spec, paths = prepared_tiny_job(tmp_path, ham_root, subset=40)
    table = prepare.load_table(spec, paths)
    ds = SkinDataset(table, spec.cache_dir, (0.5,) * 3, (0.5,) * 3, augment=1.0, seed=7)
    twin = SkinDataset(table, spec.cache_dir, (0.5,) * 3, (0.5,) * 3, augment=1.0, seed=7)
    plain = SkinDataset(table, spec.cache_dir, (0.5,) * 3, (0.5,) * 3, augment=0.0, seed=7)
    img0 = ds[3][0]
    assert img0.shape == (3, spec.preprocess.size, spec.preprocess.size)
    import torch

    torch.rand(5)  # global RNG history must not matter
    assert torch.equal(twin[3][0], img0)
    assert not torch.equal(plain[3][0], img0)
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], img0)
    s1, s2 = EpochSampler(40, seed=7), EpochSampler(40, seed=7)
    s2.set_epoch(1)
    assert list(s1) == list(EpochSampler(40, seed=7)) and list(s1) != list(s2)
    assert sorted(s1) == list(range(40))


def test_cli_trains_one_member_of_a_fresh_job(tmp_path: Path, ham_root: Path, repo: Path,
                                              fast_preprocess: dict, shell_env) -> None:
    """`skinhpc train JOB.yaml --member K key=value`: prepares the data when missing, then trains."""
    import resource
    import subprocess
    import sys

    import yaml

    job = {
        "name": "cli", "results_dir": "results", "seeds": [3, 4],
        "data": {"sources": [{"kind": "ham10000", "root": str(ham_root), "images": ["images"]}],
                 "subset": 80, "audit": {"near_duplicates": False}},
        "preprocess": {**fast_preprocess, "size": 32},
        "model": {"name": "small_cnn", "pretrained": "none"},
        "train": {"phases": [{"name": "all", "epochs": 1, "lr": 1e-3}], "batch_size": 16, "num_workers": 0},
        "cluster": {"executor": "debug"},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    cmd = [sys.executable, "-m", "skinhpc.cli", "train", str(path), "--member", "1", "train.batch_size=8"]
    # started as a user's shell would start it: none of the allocator variables this test process
    # (which imported skinhpc) exported, so the training process must apply the setting itself
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=300, env=shell_env())
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mdir = tmp_path / "results" / "cli" / "members" / "001"
    spec_json = json.loads((mdir / "spec.json").read_text())
    assert spec_json["member"]["seed"] == 4 and spec_json["spec"]["train"]["batch_size"] == 8
    done = json.loads((mdir / "done.json").read_text())
    assert done["seed"] == 4
    # the training process ran with skinhpc's allocator setting and handed it to its children
    if done["runtime"]["glibc"]:
        assert done["runtime"]["malloc"] == "keep"
        assert done["runtime"]["malloc_env"] == runtime.ENVIRONMENT
    # the CPU time done.json records is the training process's own, as the kernel counted it for
    # us when it ended: positive, no more than that (done.json is written a moment before the
    # end), and mostly user time (training is user-space work; a swapped field fails this)
    rt = done["runtime"]
    assert rt["threads"] >= 1
    assert 0 < rt["user_s"] <= used.ru_utime - before.ru_utime + 0.01
    assert 0 < rt["sys_s"] <= used.ru_stime - before.ru_stime + 0.01
    assert rt["sys_s"] < rt["user_s"]
    assert 0 < rt["minor_faults"] <= used.ru_minflt - before.ru_minflt
    assert not (tmp_path / "results" / "cli" / "members" / "000").exists()
    assert "epoch 0" in proc.stderr  # plain log lines
    bad = subprocess.run(cmd[:-2] + ["5"], cwd=repo, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "out of range" in bad.stderr


def test_multiclass_phases_metadata_focal_ema_early_stopping(tmp_path: Path, ham_root: Path,
                                                             prepared_tiny_job) -> None:
    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    train = {
        "phases": [{"name": "head", "epochs": 2, "train": "head", "lr": 1e-2},
                   {"name": "ft", "epochs": 3, "train": "last_k", "k": 2, "lr": 3e-3, "layer_decay": 0.5}],
        "batch_size": 16, "num_workers": 0, "augment": 0.3, "sampler": "balanced",
        "loss": {"name": "focal", "gamma": 2.0}, "ema": {"enabled": True, "decay": 0.9},
        "early_stopping": {"patience": 1, "metric": "loss"},
        "scheduler": {"name": "cosine_restarts", "t0": 1, "t_mult": 2},
    }
    spec, paths = prepared_tiny_job(tmp_path, ham_root, subset=160,
                                     data={"task": "multiclass", "classes": classes},
                                     model={"name": "small_cnn", "pretrained": "none",
                                            "metadata": {"enabled": True, "hidden": 8}},
                                     train=train)
    member = plan_members(spec)[0]
    train_member(spec, paths, member)
    mp = paths.member(member)
    hist = pd.read_csv(mp.history)
    assert set(hist["phase"]) == {"head", "ft"} and list(hist["epoch"]) == list(range(len(hist)))
    assert 3 <= len(hist) <= 5
    test = pd.read_csv(mp.test)
    assert list(test.columns) == ["image_id", "label"] + [f"prob_{c}" for c in classes]
    done = json.loads(mp.done.read_text())
    assert done["metric"] == "loss" and done["best_metric"] == pytest.approx(hist["val_loss"].min())
    model = load_checkpoint_model(mp.best, member.spec(spec))
    assert model.head.out_features == len(classes) and model.meta_mlp is not None


def test_multiclass_member_picked_by_malignant_auc(tmp_path: Path, ham_root: Path, prepared_tiny_job) -> None:
    """A 7-class member judged as the binary screen it will serve: best.pt is the epoch with the
    highest malignant-vs-benign AUC (sum of mel, bcc, akiec), and val.csv reproduces it."""
    from sklearn.metrics import roc_auc_score

    classes = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    train = {"phases": [{"name": "all", "epochs": 3, "train": "all", "lr": 3e-3}], "batch_size": 32,
             "num_workers": 0, "augment": 0.0, "early_stopping": {"metric": "malignant_auc"}}
    spec, paths = prepared_tiny_job(tmp_path, ham_root, subset=300,
                                     data={"task": "multiclass", "classes": classes},
                                     model={"name": "small_cnn", "pretrained": "none"}, train=train)
    member = plan_members(spec)[0]
    train_member(spec, paths, member)
    mp = paths.member(member)
    hist = pd.read_csv(mp.history)
    assert hist["val_auc_malignant"].notna().all()
    assert not hist["val_auc_malignant"].equals(hist["val_auc"])  # macro AUC is another number
    done = json.loads(mp.done.read_text())
    assert done["metric"] == "malignant_auc"
    assert done["best_metric"] == pytest.approx(hist["val_auc_malignant"].max())
    val = pd.read_csv(mp.val)
    malignant = val[["prob_mel", "prob_bcc", "prob_akiec"]].sum(axis=1)
    is_mal = val["label"].isin([classes.index(c) for c in ("mel", "bcc", "akiec")])
    assert roc_auc_score(is_mal, malignant) == pytest.approx(done["best_metric"], abs=1e-6)


def test_malignant_auc_needs_a_malignant_class(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    from skinhpc.config import SpecError

    with pytest.raises(SpecError, match=r"train\.early_stopping\.metric.*malignant"):
        tiny_job(tmp_path, ham_root, data={"task": "multiclass", "classes": ["bkl", "nv"]},
                 train={"early_stopping": {"metric": "malignant_auc"}})


def test_schedules() -> None:
    from skinhpc.config import SchedulerSpec
    from skinhpc.train.schedule import lr_lambda

    warm = lr_lambda(SchedulerSpec(name="cosine_warmup", warmup_epochs=1.0, eta_min=0.0), 10, 3, 1e-3)
    assert [warm(t) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert warm(10) == pytest.approx(1.0) and warm(20) == pytest.approx(0.5) and warm(30) == pytest.approx(0.0)
    rest = lr_lambda(SchedulerSpec(name="cosine_restarts", t0=1, t_mult=2, eta_min=0.0), 10, 7, 1e-3)
    # periods of 1, 2, 4 epochs: restarts at steps 10 and 30
    assert rest(0) == 1.0 and rest(5) == pytest.approx(0.5) and rest(10) == 1.0 and rest(20) == pytest.approx(0.5)
    assert rest(30) == 1.0 and rest(29) < 0.01


def test_member_files_swapped_in_from_another_seed_are_refused(tmp_path: Path, ham_root: Path, tiny_job) -> None:
    """best.pt and done.json copied from member 0 (seed 1) into member 1 (seed 2): same model and
    config, so the architecture and fingerprint checks pass; the seed and index do not."""
    spec = tiny_job(tmp_path, ham_root, seeds=[1, 2], model={"name": "small_cnn", "pretrained": "none"})
    paths = JobPaths(spec.job_dir)
    members = plan_members(spec)
    for m in members:  # each member's files as training leaves them (untrained weights suffice)
        mspec, mp = m.spec(spec), paths.member(m)
        mp.root.mkdir(parents=True)
        torch.manual_seed(m.seed)
        meta = {**checkpoint_meta(mspec), **member_identity(spec, m), "epoch": 0}
        torch.save({"model": build_model(mspec).state_dict(), "meta": meta}, mp.best)
        write_member_done(spec, paths, m, best_epoch=0)
    assert done_members(spec, paths, members) == {0, 1}
    assert [m.index for m, _ in gather_members(spec, paths)[0]] == [0, 1]

    shutil.copy(paths.member(0).best, paths.member(1).best)
    loaded, missing = gather_members(spec, paths)
    assert [m.index for m, _ in loaded] == [0]
    assert [m.member.index for m in missing] == [1] and "seed is 1, this member's is 2" in missing[0].reason

    shutil.copy(paths.member(0).done, paths.member(1).done)
    assert done_members(spec, paths, members) == {0}  # member 1 retrains on relaunch
    assert "seed is 1" in (member_done_problem(spec, paths, members[1]) or "")
