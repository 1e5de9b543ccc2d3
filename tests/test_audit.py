"""The audit on the real shared images: the known byte-identical pair, and a planted leak."""

from __future__ import annotations

import io
import json
import shutil

import pandas as pd
import pytest
from PIL import Image

from skinhpc.config import from_dict
from skinhpc.data.audit import AuditError, near_pairs, run_audit
from skinhpc.data.sources import build_manifest
from skinhpc.data.splits import make_splits


def _spec(tmp_path, root, **audit):
    return from_dict({"name": "a", "base_dir": str(tmp_path), "data": {
        "sources": [{"kind": "ham10000", "root": str(root)}], "audit": audit}})


def test_near_pairs_matches_brute_force():
    import random

    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(40)]
    hashes = base + [h ^ (1 << rng.randrange(64)) ^ (1 << rng.randrange(64)) for h in base[:10]]
    hashes.append(None)
    got = near_pairs(hashes, 64, 4)
    brute = [(i, j, (hashes[i] ^ hashes[j]).bit_count())
             for i in range(len(hashes)) for j in range(i + 1, len(hashes))
             if hashes[i] is not None and hashes[j] is not None
             and (hashes[i] ^ hashes[j]).bit_count() <= 4]
    assert got == sorted(brute) and len(got) >= 10


@pytest.fixture(scope="module")
def leaked(ham_root, tmp_path_factory):
    """The shared folder plus a re-encoded, resized copy of one image under a new lesion id,
    forced into another split than its original."""
    tmp = tmp_path_factory.mktemp("audit")
    root = tmp / "ham"
    (root / "images").mkdir(parents=True)
    for f in (ham_root / "images").iterdir():
        (root / "images" / f.name).symlink_to(f)
    meta = pd.read_csv(ham_root / "metadata.csv")
    src = meta[meta["image_id"] == "ISIC_0027419"].iloc[0]
    im = Image.open(ham_root / "images" / "ISIC_0027419.jpg").resize((190, 142))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=60)
    (root / "images" / "ISIC_9999999.jpg").write_bytes(buf.getvalue())
    row = src.copy()
    row["image_id"], row["lesion_id"] = "ISIC_9999999", "HAM_9999999"
    pd.concat([meta, row.to_frame().T]).to_csv(root / "metadata.csv", index=False)
    spec = _spec(tmp, root)
    m = build_manifest(spec)
    s = make_splits(m, spec.data.split)
    orig = s.loc[s["image_id"] == "ISIC_0027419", "split"].iloc[0]
    s.loc[s["image_id"] == "ISIC_9999999", "split"] = "test" if orig != "test" else "train"
    return tmp, root, m, s


def test_audit_reports_identical_pair_as_one_group_and_flags_planted_leak(leaked):
    tmp, root, m, s = leaked
    spec = _spec(tmp, root)
    report = run_audit(spec, m, s, tmp / "audit.json")
    on_disk = json.loads((tmp / "audit.json").read_text())
    assert on_disk["summary"] == report["summary"] and not on_disk["ok"]
    exact = [f for f in report["findings"] if f["kind"] == "exact_duplicate"]
    pair = [f for f in exact if set(f["image_ids"]) == {"ISIC_0024366", "ISIC_0029861"}]
    assert len(pair) == 1 and pair[0]["same_group"] and not pair[0]["leak"]
    assert pair[0]["groups"] == ["lesion:HAM_0002300"]
    planted = [f for f in report["findings"] if f["kind"] == "near_duplicate"
               and set(f["image_ids"]) == {"ISIC_0027419", "ISIC_9999999"}]
    assert len(planted) == 1 and planted[0]["leak"] and planted[0]["distance"] <= 2
    assert not [f for f in report["findings"] if f["kind"] == "group_leak"]
    assert report["n_images"] == 3334
    assert sum(sum(c.values()) for c in report["counts"].values()) == 3334
    assert report["missing"]["age"] == 16


def test_group_leak_and_fail_mode(leaked):
    tmp, root, m, s = leaked
    s = s.copy()
    g = s.loc[s["image_id"] == "ISIC_0024366", "group"].iloc[0]
    s.loc[s["image_id"] == "ISIC_0024366", "split"] = "val"
    s.loc[s["image_id"] == "ISIC_0029861", "split"] = "test"
    spec = _spec(tmp, root, near_duplicates=False, on_findings="fail")
    with pytest.raises(AuditError, match=r"audit2.json: 2 cross-split finding"):
        run_audit(spec, m, s, tmp / "audit2.json")
    report = json.loads((tmp / "audit2.json").read_text())
    leak = [f for f in report["findings"] if f["kind"] == "group_leak"]
    assert leak[0]["group"] == g and {"test", "val"} <= set(leak[0]["splits"])
    assert any(f["kind"] == "exact_duplicate" and f["leak"] for f in report["findings"])


def test_unreadable_image_is_a_finding_not_a_crash(ham_root, tmp_path):
    root = tmp_path / "ham"
    meta = pd.read_csv(ham_root / "metadata.csv").head(30)
    (root / "images").mkdir(parents=True)
    for i in meta["image_id"]:
        shutil.copy(ham_root / "images" / f"{i}.jpg", root / "images")
    (root / "images" / f"{meta['image_id'][0]}.jpg").write_bytes(b"not a jpeg")
    meta.to_csv(root / "metadata.csv", index=False)
    spec = _spec(tmp_path, root)
    m = build_manifest(spec)
    report = run_audit(spec, m, make_splits(m, spec.data.split), tmp_path / "audit.json")
    bad = [f for f in report["findings"] if f["kind"] == "unreadable"]
    assert bad[0]["image_ids"] == [meta["image_id"][0]] and report["unreadable"] == 1



def test_decompression_bomb_is_refused_not_decoded(ham_root, tmp_path, png_bomb):
    """A 25 KB PNG of 100 M pixels among real images: the audit refuses it from its header,
    as the reader does, instead of decoding 300 MB of RGB to hash it."""
    root = tmp_path / "ham"
    meta = pd.read_csv(ham_root / "metadata.csv").head(30)
    (root / "images").mkdir(parents=True)
    for i in meta["image_id"]:
        shutil.copy(ham_root / "images" / f"{i}.jpg", root / "images")
    shutil.copy(png_bomb, root / "images" / f"{meta['image_id'][0]}.jpg")
    meta.to_csv(root / "metadata.csv", index=False)
    spec = _spec(tmp_path, root)
    m = build_manifest(spec)
    report = run_audit(spec, m, make_splits(m, spec.data.split), tmp_path / "audit.json")
    (bad,) = [f for f in report["findings"] if f["kind"] == "unreadable"]
    assert bad["image_ids"] == [meta["image_id"][0]] and "too many pixels" in bad["reason"]


def test_group_leaks_same_as_before(leaked):
    """Group leaks are counted in one groupby since issue 23: the findings (order, splits, ids)
    are what the per-group set gave, on several leaking groups over all three splits."""
    tmp, root, m, s = leaked
    s = s.copy()
    multi = s["group"].value_counts()
    multi = sorted(multi.index[multi >= 3])[:6]
    for k, g in enumerate(multi):
        rows = s.index[s["group"] == g]
        s.loc[rows[0], "split"] = ["val", "test", "train"][k % 3]
        s.loc[rows[1], "split"] = ["test", "train", "val"][k % 3]
    spec = _spec(tmp, root, near_duplicates=False)
    report = run_audit(spec, m, s, tmp / "audit3.json")
    got = [f for f in report["findings"] if f["kind"] == "group_leak"]
    t = m.drop(columns=["group"]).merge(s, on="image_id", how="inner", validate="1:1")
    per_group = t.groupby("group")["split"].agg(lambda x: sorted(set(x)))  # the code before
    ref = [{"kind": "group_leak", "group": g, "splits": sp,
            "image_ids": t.loc[t["group"] == g, "image_id"].tolist(), "leak": True}
           for g, sp in per_group[per_group.map(len) > 1].items()]
    assert got == ref and len(got) >= 5


def test_exact_duplicates_same_as_before(leaked):
    """Exact duplicates are grouped over the repeated digests only since issue 23: the findings
    equal the every-row grouping's, on a pair, a triple and a pair across groups and splits."""
    from skinhpc.data.audit import audit, sha1_file

    tmp, root, m, s = leaked
    m = m.iloc[:40].copy().reset_index(drop=True)
    s = s[s["image_id"].isin(m["image_id"])].copy()
    for a, copies in ((0, [5, 9]), (1, [30]), (2, [17])):  # rows 5, 9, 30, 17 read another's file
        m.loc[copies, "path"] = m["path"][a]
    spec = _spec(tmp, root, near_duplicates=False)
    got = [f for f in audit(spec, m, s)["findings"] if f["kind"] == "exact_duplicate"]
    t = m.drop(columns=["group"]).merge(s, on="image_id", how="inner", validate="1:1")
    t["sha1"] = [sha1_file(p) for p in t["path"]]
    ref = []
    for digest, idx in t.groupby("sha1").groups.items():  # the code before
        if len(idx) < 2:
            continue
        rows = t.loc[idx]
        groups, sp = sorted(set(rows["group"])), sorted(set(rows["split"]))
        ref.append({"kind": "exact_duplicate", "sha1": digest, "image_ids": rows["image_id"].tolist(),
                    "groups": groups, "splits": sp, "distance": 0, "same_group": len(groups) == 1,
                    "leak": len(sp) > 1})
    assert got == ref and len(got) == 3 and sorted(len(f["image_ids"]) for f in got) == [2, 2, 3]


def test_audit_on_worker_processes_equals_the_serial_audit(leaked, ham_root, tmp_path):
    """The per-file pass (digest + perceptual hash) runs on preprocess.workers processes: the
    findings, unreadable files included, are the serial pass's, in the same order."""
    tmp, root, m, s = leaked
    bad_root = tmp_path / "ham"
    meta = pd.read_csv(ham_root / "metadata.csv").head(200)
    (bad_root / "images").mkdir(parents=True)
    for i in meta["image_id"]:
        (bad_root / "images" / f"{i}.jpg").symlink_to(ham_root / "images" / f"{i}.jpg")
    (bad_root / "images" / f"{meta['image_id'][5]}.jpg").unlink()
    (bad_root / "images" / f"{meta['image_id'][5]}.jpg").write_bytes(b"not a jpeg")
    meta.to_csv(bad_root / "metadata.csv", index=False)
    reports = {}
    for case, (r, man, spl) in {"leaked": (root, m, s), "bad": (bad_root, None, None)}.items():
        for workers in (0, 2):
            spec = from_dict({"name": "a", "base_dir": str(tmp_path), "preprocess": {"workers": workers},
                              "data": {"sources": [{"kind": "ham10000", "root": str(r)}]}})
            if man is None:
                man = build_manifest(spec)
                spl = make_splits(man, spec.data.split)
            reports[case, workers] = run_audit(spec, man, spl, tmp_path / f"{case}{workers}.json")
    for case in ("leaked", "bad"):
        assert reports[case, 0]["findings"] == reports[case, 2]["findings"]
        assert reports[case, 0]["summary"] == reports[case, 2]["summary"]
    assert reports["bad", 2]["unreadable"] == 1
    assert any(f["kind"] == "near_duplicate" and f["leak"] for f in reports["leaked", 2]["findings"])
