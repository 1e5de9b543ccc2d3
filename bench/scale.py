"""Cost growth with the number of images: each CPU-side stage timed at several N, one table per
stage and the log-log slope of its seconds in N (issue 23).

    .venv/bin/python bench/scale.py --quick              # N = 2,000 and 4,000, every stage
    .venv/bin/python bench/scale.py --sizes 2000,8000,32000 --stages manifest,split,audit

A synthetic dataset in ISIC 2020's Kaggle layout (``train.csv`` with its columns, JPEGs at
``jpeg/train/ISIC_XXXXXXX.jpg``, 1024x768 at quality 90, a few hundred KB each) is generated once
per (N, seed, version) under ``--root`` (outside the repository) and reused while its recorded
parameters match; ``job.yaml`` beside it reads it with the ``isic2020`` source, as a user's job
does.  Patients hold several images each (ISIC 2020 has ~16), ~2 % are malignant, and a share of
images are near-duplicates (the same picture re-encoded and shifted, filed under another
patient) or exact byte copies, so the audit has real work.

Every (stage, N) runs in a fresh child (``--run-stage``): its optional PREP (setup that is not
the user's work) in one child, the stage in another, so the figures hold only the stage.  The
seconds are the stage function's own, timed in the child (interpreter and imports excluded, which
would flatten the slope at small N); the peak RSS is the child's process tree (``os.wait4``).
Stage modules beside this file (``scale_reduce``, ``scale_orchestrate``) add their stages
through the same ``STAGES`` / ``SIZES`` / ``UNITS`` / ``PREP`` interface, and optionally ``WARM``
(modules the child imports before the clock starts).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from itertools import combinations
from pathlib import Path

import numpy as np
from common import loglog_slope, markdown_table

HERE = Path(__file__).resolve().parent
VERSION = 1  # bump when the generator's output changes: cached datasets of another version are rebuilt
WIDTH, HEIGHT, QUALITY = 1024, 768, 90
POOL = 24  # base textures; each image is one of them shifted, relit, with its own lesion
MALIGNANT_SHARE = 0.018  # ISIC 2020: 584 of 33,126
NEAR_SHARE = 0.01  # images that re-encode an earlier one with a small shift (another patient)
EXACT_SHARE = 0.002  # byte copies of an earlier file under a new name (another patient)
DEFAULT_SIZES = [2000, 8000, 32000, 64000]
QUICK_SIZES = [2000, 4000]
LOADER_IMAGES = 2048  # the loader stage times this many images at every N (its slope should be ~0)
LOADER_BATCH = 32
SHARDS = 8  # cache_shard builds 1 of 8, as one task of a SLURM prepare array does

Stage = Callable[[int, Path, Path], dict]


# --------------------------------------------------------------------------- the dataset
def _texture(rng: np.random.Generator) -> np.ndarray:
    """A skin-like background (BGR uint8): a smooth tone field plus fine texture, so the JPEG is
    a realistic few hundred KB rather than 20 KB of flat colour."""
    import cv2

    tone = np.array([rng.uniform(120, 175), rng.uniform(140, 190), rng.uniform(185, 235)])
    field = cv2.resize(rng.normal(0, 12, (6, 8, 3)).astype(np.float32), (WIDTH, HEIGHT),
                       interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.normal(0, 16, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 0.6)[..., None]
    pores = cv2.GaussianBlur(rng.normal(0, 10, (HEIGHT, WIDTH)).astype(np.float32), (0, 0), 3.0)[..., None]
    img = tone + field + fine + pores
    return np.clip(img, 0, 255).astype(np.uint8)


def _lesion(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw a darker irregular blob (two overlapping ellipses, a darker core) in place."""
    import cv2

    cx, cy = int(rng.uniform(0.25, 0.75) * WIDTH), int(rng.uniform(0.25, 0.75) * HEIGHT)
    a, b = int(rng.uniform(40, 220)), int(rng.uniform(40, 180))
    colour = rng.uniform(20, 110, 3) * np.array([0.8, 0.7, 0.6])
    x0, y0 = max(cx - a - 40, 0), max(cy - a - 40, 0)
    x1, y1 = min(cx + a + 40, WIDTH), min(cy + a + 40, HEIGHT)
    roi = img[y0:y1, x0:x1].astype(np.float32)
    mask = np.zeros(roi.shape[:2], np.float32)
    angle = float(rng.uniform(0, 180))
    cv2.ellipse(mask, (cx - x0, cy - y0), (a, b), angle, 0, 360, 1.0, -1)
    cv2.ellipse(mask, (cx - x0 + int(rng.integers(-a // 3, a // 3 + 1)), cy - y0),
                (max(a // 2, 8), max(b // 2, 8)), angle + 40, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 6)[..., None]
    roi = roi * (1 - 0.85 * mask) + colour * 0.85 * mask
    img[y0:y1, x0:x1] = np.clip(roi, 0, 255).astype(np.uint8)


def _compose(pool: list[np.ndarray], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = pool[int(rng.integers(len(pool)))]
    img = np.roll(base, (int(rng.integers(HEIGHT)), int(rng.integers(WIDTH))), axis=(0, 1))
    img = np.flipud(img) if rng.random() < 0.5 else img
    img = np.ascontiguousarray(img)
    gain = rng.uniform(0.85, 1.1)
    if abs(gain - 1) > 0.01:
        import cv2

        img = cv2.convertScaleAbs(img, alpha=gain, beta=0)
    _lesion(img, rng)
    return img


def _encode(img: np.ndarray, quality: int = QUALITY) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


_POOL: list[np.ndarray] = []


def _init_gen(seed: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    rng = np.random.default_rng(seed)
    _POOL[:] = [_texture(rng) for _ in range(POOL)]


def _write_images(job: tuple[Path, list[tuple[str, int, str, int]]]) -> int:
    """Write a chunk of images: (name, image seed, kind, source index); returns bytes written.
    ``near`` re-composes the source's picture, shifts it a few pixels and re-encodes it at
    another quality; ``exact`` is written by the parent (a byte copy)."""
    folder, items = job
    total = 0
    for name, s, kind, _ in items:
        img = _compose(_POOL, s)
        q = QUALITY
        if kind == "near":
            rng = np.random.default_rng(s + 1)
            img = np.roll(img, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
            q = int(rng.integers(80, 96))
        data = _encode(img, q)
        tmp = folder / f".{name}.jpg.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / f"{name}.jpg")
        total += len(data)
    return total


def plan_dataset(n: int, seed: int) -> list[dict]:
    """The rows of train.csv plus each image's recipe (``_seed``, ``_kind``, ``_of``)."""
    rng = np.random.default_rng(seed)
    sites = ["torso", "lower extremity", "upper extremity", "head/neck", "palms/soles",
             "oral/genital", ""]
    site_p = [0.5, 0.25, 0.15, 0.06, 0.01, 0.01, 0.02]
    rows: list[dict] = []
    pid = 0
    while len(rows) < n:
        pid += 1
        k = min(int(rng.geometric(1 / 16)), 115, n - len(rows))
        sex = str(rng.choice(["male", "female", ""], p=[0.51, 0.48, 0.01]))
        age = "" if rng.random() < 0.002 else str(int(rng.integers(2, 18)) * 5)
        for _ in range(k):
            i = len(rows)
            malignant = rng.random() < MALIGNANT_SHARE
            diag = "melanoma" if malignant else str(rng.choice(
                ["unknown", "nevus", "seborrheic keratosis", "lentigo NOS", "lichenoid keratosis"],
                p=[0.83, 0.16, 0.005, 0.003, 0.002]))
            rows.append({
                "image_name": f"ISIC_{1000000 + i * 7:07d}",
                "patient_id": f"IP_{1000000 + pid * 13:07d}",
                "sex": sex,
                "age_approx": age,
                "anatom_site_general_challenge": sites[int(rng.choice(len(sites), p=site_p))],
                "diagnosis": diag,
                "benign_malignant": "malignant" if malignant else "benign",
                "target": int(malignant),
                "_seed": seed * 1_000_003 + i,
                "_kind": "base",
                "_of": -1,
            })
    # plant copies: each points at an earlier image of *another* patient
    for kind, share in (("near", NEAR_SHARE), ("exact", EXACT_SHARE)):
        for i in rng.choice(np.arange(n // 2, n), size=max(1, int(n * share)), replace=False):
            r = rows[int(i)]
            if r["_kind"] != "base":
                continue
            j = int(rng.integers(0, n // 2))
            if rows[j]["_kind"] != "base" or rows[j]["patient_id"] == r["patient_id"]:
                continue
            r.update(_kind=kind, _of=j, _seed=rows[j]["_seed"], diagnosis=rows[j]["diagnosis"],
                     benign_malignant=rows[j]["benign_malignant"], target=rows[j]["target"])
    return rows


def _dir_bytes(folder: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(folder):
        total += sum(os.stat(os.path.join(dirpath, f)).st_blocks * 512 for f in files)
    return total


def dataset(n: int, seed: int, root: Path, workers: int = 2) -> Path:
    """The dataset of ``n`` images under ``root``, generated unless one with the same recorded
    (n, seed, version) is complete there (``params.json`` is written last)."""
    import pandas as pd

    folder = root / f"isic2020-n{n}-s{seed}-v{VERSION}"
    params = {"n": n, "seed": seed, "version": VERSION, "width": WIDTH, "height": HEIGHT,
              "quality": QUALITY}
    record = folder / "params.json"
    if record.is_file():
        got = json.loads(record.read_text())
        if {k: got.get(k) for k in params} == params:
            return folder
    if folder.exists():
        shutil.rmtree(folder)
    images = folder / "jpeg" / "train"
    images.mkdir(parents=True)
    rows = plan_dataset(n, seed)
    t0 = time.perf_counter()
    todo = [(r["image_name"], r["_seed"], r["_kind"], r["_of"]) for r in rows if r["_kind"] != "exact"]
    chunks = [(images, todo[i:i + 64]) for i in range(0, len(todo), 64)]
    with ProcessPoolExecutor(workers, initializer=_init_gen, initargs=(seed,)) as ex:
        written = sum(ex.map(_write_images, chunks))
    for r in rows:
        if r["_kind"] == "exact":
            shutil.copyfile(images / f"{rows[r['_of']]['image_name']}.jpg", images / f"{r['image_name']}.jpg")
    seconds = time.perf_counter() - t0
    table = pd.DataFrame(rows).drop(columns=["_seed", "_kind", "_of"])
    table.to_csv(folder / "train.csv", index=False)
    (folder / "job.yaml").write_text(job_yaml(folder))
    kinds = pd.Series([r["_kind"] for r in rows]).value_counts().to_dict()
    record.write_text(json.dumps({**params, "seconds": round(seconds, 1), "jpeg_bytes": written,
                                  "disk_bytes": _dir_bytes(folder), "planted": kinds,
                                  "patients": int(table["patient_id"].nunique()),
                                  "malignant": int(table["target"].sum())}, indent=1))
    print(f"generated {n} images in {seconds:.0f} s ({n / seconds:.0f} img/s, {workers} processes), "
          f"{written / n / 1e3:.0f} KB each: {folder}", file=sys.stderr)
    return folder


def job_yaml(folder: Path) -> str:
    """A job reading the dataset as a user's ISIC 2020 job does (configs/data/isic2020.yaml's
    source kind, shipped preprocessing at the jobs' size 128)."""
    return (f"# written by bench/scale.py: the synthetic ISIC 2020 dataset beside this file\n"
            f"name: scale\n"
            f"data:\n"
            f"  sources:\n"
            f"    - {{kind: isic2020, root: {folder}, name: isic2020}}\n"
            f"  task: binary\n"
            f"  malignant: [mel, bcc, akiec, scc]\n"
            f"  split: {{method: holdout, fractions: [0.7, 0.15, 0.15], group_by: auto, seed: 42}}\n"
            f"preprocess: {{size: 128}}\n")


# --------------------------------------------------------------------------- the data stages
def load_job(data_dir: Path, work_dir: Path, **overrides: object):
    """The dataset's job.yaml with its results (and cache) under ``work_dir``."""
    from skinhpc.config import load_spec

    ov = [f"results_dir={work_dir}", "name=job", f"preprocess.cache_dir={work_dir / 'cache'}"]
    ov += [f"{k}={v}" for k, v in overrides.items()]
    return load_spec(data_dir / "job.yaml", ov)


def _paths(spec):
    from skinhpc.io.layout import JobPaths

    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    return paths


def prep_manifest(n: int, data_dir: Path, work_dir: Path) -> None:
    """manifest.csv in the job folder (what the split and audit stages start from)."""
    from skinhpc.data.sources import prepare_manifest, write_manifest

    spec = load_job(data_dir, work_dir)
    write_manifest(prepare_manifest(spec).table, _paths(spec).manifest)


def prep_splits(n: int, data_dir: Path, work_dir: Path) -> None:
    from skinhpc.data.prepare import prepare_tables

    spec = load_job(data_dir, work_dir)
    prepare_tables(spec, _paths(spec), audit=False)


def prep_audit(n: int, data_dir: Path, work_dir: Path) -> None:
    """Tables, and the planted copies as pairs of names (to count how many the audit found)."""
    prep_splits(n, data_dir, work_dir)
    plan = plan_dataset(n, json.loads((data_dir / "params.json").read_text())["seed"])
    pairs = [{"kind": r["_kind"], "pair": sorted([r["image_name"], plan[r["_of"]]["image_name"]])}
             for r in plan if r["_kind"] != "base"]
    (work_dir / "planted.json").write_text(json.dumps(pairs))


def stage_manifest(n: int, data_dir: Path, work_dir: Path) -> dict:
    """The sources read, deduplicated, labelled, grouping-checked and written: the first half of
    ``prepare_tables`` (``skinhpc data summary`` does the same reading)."""
    from skinhpc.data.sources import prepare_manifest, write_manifest

    spec = load_job(data_dir, work_dir)
    paths = _paths(spec)
    write_manifest(prepare_manifest(spec).table, paths.manifest)
    return {"manifest_kb": round(paths.manifest.stat().st_size / 1e3)}


def stage_split(n: int, data_dir: Path, work_dir: Path) -> dict:
    """splits.csv from manifest.csv: the grouped, stratified deal of ``prepare_tables``."""
    from skinhpc.data.sources import read_manifest_csv
    from skinhpc.data.splits import make_splits

    spec = load_job(data_dir, work_dir)
    paths = _paths(spec)
    splits = make_splits(read_manifest_csv(paths.manifest), spec.data.split)
    splits.to_csv(paths.splits, index=False)
    return {"groups": int(splits["group"].nunique())}


def stage_audit(n: int, data_dir: Path, work_dir: Path) -> dict:
    """audit.json: group leaks, exact duplicates (sha1) and near-duplicates (phash)."""
    import pandas as pd

    from skinhpc.data.audit import run_audit
    from skinhpc.data.sources import read_manifest_csv

    spec = load_job(data_dir, work_dir)
    paths = _paths(spec)
    splits = pd.read_csv(paths.splits, dtype=str, keep_default_na=False)
    report = run_audit(spec, read_manifest_csv(paths.manifest), splits, paths.audit)
    kinds = pd.Series([f["kind"] for f in report["findings"]], dtype=object).value_counts()
    out = {"exact": int(kinds.get("exact_duplicate", 0)), "near": int(kinds.get("near_duplicate", 0))}
    planted = work_dir / "planted.json"
    if planted.is_file():  # how many planted copies were found: (found/planted) per kind
        found = {kind: {frozenset(p) for f in report["findings"] if f["kind"] == kind
                        for p in combinations(f["image_ids"], 2)}
                 for kind in ("exact_duplicate", "near_duplicate")}
        for kind, name in (("exact", "exact_duplicate"), ("near", "near_duplicate")):
            pairs = [frozenset(p["pair"]) for p in json.loads(planted.read_text()) if p["kind"] == kind]
            out[f"planted_{kind}_found"] = f"{sum(p in found[name] for p in pairs)}/{len(pairs)}"
    return out


def stage_cache_shard(n: int, data_dir: Path, work_dir: Path) -> dict:
    """One prepare array task: shard 0 of 8 (1/8 of the images), preprocess.workers as shipped."""
    from skinhpc.data.prepare import build_cache

    spec = load_job(data_dir, work_dir)
    report = build_cache(spec, _paths(spec), shard=0, num_shards=SHARDS)
    return {"built": report["n_built"]}


def stage_cache_all(n: int, data_dir: Path, work_dir: Path) -> dict:
    """The whole cache in one task, then ``finalize`` (prepare.done.json), as ``skinhpc data cache``."""
    from skinhpc.data.prepare import build_cache, finalize

    spec = load_job(data_dir, work_dir)
    paths = _paths(spec)
    build_cache(spec, paths)
    done = finalize(spec, paths)
    return {"cached": done["n_cached"], "cache_mb": round(_dir_bytes(spec.cache_dir) / 1e6)}


def prep_loader(n: int, data_dir: Path, work_dir: Path) -> None:
    """Tables, and a cache entry for every image of the table (random pixels: the read rate does
    not depend on them, and decoding N JPEGs here would be the cache stage again)."""
    from skinhpc.data.cache import cache_path

    prep_splits(n, data_dir, work_dir)
    spec = load_job(data_dir, work_dir)
    from skinhpc.data.sources import read_manifest_csv

    spec.cache_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (spec.preprocess.size, spec.preprocess.size, 3), dtype=np.uint8)
    for image_id in read_manifest_csv(_paths(spec).manifest)["image_id"]:
        np.save(cache_path(spec.cache_dir, image_id), arr)


def stage_loader(n: int, data_dir: Path, work_dir: Path) -> dict:
    """The training loader over the train split of N images as ``build_inputs`` makes it (its
    sampler, augmentation and ``train.num_workers`` as shipped; ImageNet mean/std instead of
    timm's config, which would build the model); LOADER_IMAGES images timed."""
    from torch.utils.data import DataLoader

    from skinhpc.data.dataset import EpochSampler, SkinDataset
    from skinhpc.data.prepare import load_table

    spec = load_job(data_dir, work_dir)
    table = load_table(spec, _paths(spec))
    train = table[table["split"] == "train"].reset_index(drop=True)
    ds = SkinDataset(train, spec.cache_dir, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                     augment=spec.train.augment, seed=0, metadata=spec.model.metadata.enabled)
    loader = DataLoader(ds, batch_size=LOADER_BATCH, sampler=EpochSampler(len(ds), 0, shuffle=True),
                        num_workers=spec.train.num_workers, drop_last=True)
    t, seen, epoch = None, 0, 0
    while seen < LOADER_IMAGES:  # a small train split is read for several epochs
        loader.sampler.set_epoch(epoch)
        for x, *_ in loader:
            if t is None:  # the first batch is the workers' start-up, not the reading rate
                t = time.perf_counter()
                continue
            seen += len(x)
            if seen >= LOADER_IMAGES:
                break
        epoch += 1
    return {"img_s": round(seen / (time.perf_counter() - t)), "workers": spec.train.num_workers}


STAGES: dict[str, Stage] = {
    "manifest": stage_manifest,
    "split": stage_split,
    "audit": stage_audit,
    "cache_shard": stage_cache_shard,
    "cache_all": stage_cache_all,
    "loader": stage_loader,
}
PREP: dict[str, Callable[[int, Path, Path], None]] = {
    "split": prep_manifest,
    "audit": prep_audit,
    "cache_shard": prep_splits,
    "cache_all": prep_splits,
    "loader": prep_loader,
}
SIZES: dict[str, list[int]] = {}
# modules a stage's child imports before its clock starts (optional in every stage module): the
# figures are the work, not the interpreter's imports, which would flatten the slope at small n
WARM: dict[str, list[str]] = {
    **{name: ["skinhpc.data.prepare", "imagehash"] for name in ("manifest", "split", "audit",
                                                                 "cache_shard", "cache_all")},
    "loader": ["skinhpc.data.prepare", "skinhpc.data.dataset"],
}
UNITS: dict[str, str] = {"loader": "images (N in the dataset; 2,048 read)"}
STAGE_MODULES = ("scale", "scale_reduce", "scale_orchestrate")


# --------------------------------------------------------------------------- the harness
def registry() -> tuple[dict[str, Stage], dict, dict, dict, dict]:
    """Every stage module's STAGES/SIZES/UNITS/PREP/WARM merged (a module not there yet is skipped)."""
    stages: dict[str, Stage] = {}
    sizes: dict[str, list[int]] = {}
    units: dict[str, str] = {}
    prep: dict[str, Callable] = {}
    warm: dict[str, list[str]] = {}
    for name in STAGE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        stages.update(mod.STAGES)
        sizes.update(getattr(mod, "SIZES", {}))
        units.update(getattr(mod, "UNITS", {}))
        prep.update(getattr(mod, "PREP", {}))
        warm.update(getattr(mod, "WARM", {}))
    return stages, sizes, units, prep, warm


def run_stage(name: str, n: int, data: Path, work: Path, prep: bool, out: Path) -> None:
    """In the child: run the stage (or its prep) and write its seconds and columns to ``out``."""
    stages, _, _, preps, warm = registry()
    fn = preps[name] if prep else stages[name]
    for module in warm.get(name, []):
        importlib.import_module(module)
    t = time.perf_counter()
    extra = fn(n, data, work) or {}
    seconds = time.perf_counter() - t
    out.write_text(json.dumps({"seconds": seconds, "extra": extra}))


def _child(name: str, n: int, data: Path, work: Path, prep: bool) -> dict:
    """Run one child; its seconds, columns and peak RSS (MB) of its process tree."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--run-stage", name, "--n", str(n),
           "--data", str(data), "--work", str(work), "--result", str(out)] + (["--prep"] if prep else [])
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    try:
        if p.returncode != 0:
            raise RuntimeError(f"stage {name} at n={n}{' (prep)' if prep else ''} exited {p.returncode}")
        got = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    return {**got, "wall": wall, "peak_mb": usage.ru_maxrss / 1024}


def measure(names: list[str], sizes: list[int], root: Path, seed: int, work_root: Path,
            gen_workers: int, keep: bool = False) -> dict[str, list[dict]]:
    stages, own_sizes, units, preps, _ = registry()
    unknown = [s for s in names if s not in stages]
    if unknown:
        sys.exit(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(stages)}")
    image_sizes = sorted({n for s in names if s not in own_sizes for n in sizes} or {min(sizes)})
    data = {n: dataset(n, seed, root, gen_workers) for n in sorted(set(image_sizes) | {min(sizes)})}
    disk = [(f"{n:,}", f"{json.loads((d / 'params.json').read_text())['disk_bytes'] / 1e9:.2f}")
            for n, d in data.items()]
    print("### synthetic datasets\n")
    print(markdown_table(["N", "disk GB"], disk))
    results: dict[str, list[dict]] = {}
    for name in names:
        rows = []
        for n in own_sizes.get(name, sizes):
            d = data.get(n, data[min(data)])
            work = work_root / f"{name}-{n}"
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
            try:
                if name in preps:
                    _child(name, n, d, work, prep=True)
                r = _child(name, n, d, work, prep=False)
            finally:
                if not keep:
                    shutil.rmtree(work, ignore_errors=True)
            rows.append({"n": n, **r})
            print(f"  {name} n={n}: {r['seconds']:.2f} s, {r['peak_mb']:.0f} MB {r['extra']}",
                  file=sys.stderr, flush=True)
        results[name] = rows
        print_stage(name, rows, units.get(name, "images"))
    return results


def print_stage(name: str, rows: list[dict], unit: str) -> None:
    extra = sorted({k for r in rows for k in r["extra"]})
    table = [[f"{r['n']:,}", f"{r['seconds']:.2f}", f"{r['peak_mb']:.0f}",
              *(str(r["extra"].get(k, "")) for k in extra)] for r in rows]
    print(f"\n### {name} (n: {unit})\n")
    print(markdown_table(["n", "seconds", "peak MB", *extra], table))
    if len(rows) > 1:
        slope = loglog_slope([r["n"] for r in rows], [r["seconds"] for r in rows])
        mem = loglog_slope([r["n"] for r in rows], [r["peak_mb"] for r in rows])
        print(f"\nlog-log slope of seconds in n: **{slope:.2f}** (peak MB: {mem:.2f})")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"N = {QUICK_SIZES}, every stage")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated N")
    ap.add_argument("--stages", default=None, help="comma-separated stage names (default: all)")
    ap.add_argument("--root", type=Path, default=Path("/work/scale-data"),
                    help="where the datasets are cached (outside the repository)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gen-workers", type=int, default=2, help="processes generating images")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep each stage's work folder")
    ap.add_argument("--generate-only", action="store_true", help="build the datasets and stop")
    # the child's side
    ap.add_argument("--run-stage", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prep", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_stage:
        run_stage(args.run_stage, args.n, args.data, args.work, args.prep, args.result)
        return
    sizes = QUICK_SIZES if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.generate_only:
        for n in sizes:
            dataset(n, args.seed, args.root, args.gen_workers)
        return
    names = args.stages.split(",") if args.stages else list(registry()[0])
    args.root.mkdir(parents=True, exist_ok=True)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        measure(names, sizes, args.root, args.seed, args.work, args.gen_workers, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="scale-", dir=args.root) as tmp:
            measure(names, sizes, args.root, args.seed, Path(tmp), args.gen_workers, args.keep)


if __name__ == "__main__":
    main()
