"""Shared fixtures, the one place test modules get what they share: where the checkout and the
real data live, a tiny real job on that data (as a spec, prepared, or trained and reduced once per
session), and the single-node SLURM dev cluster with fast job files for it.

Test modules request these as arguments and never import this file (or one another):
tests/test_architecture.py checks that.  Builders are fixtures returning the function, so a module
or session fixture can call them with its own folder.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from skinhpc import runtime
from skinhpc.config import JobSpec, deep_merge, dump_yaml, from_dict, plan_members
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths
from skinhpc.orchestrate.backends.slurm import scontrol_max_array_size

# The checkout root: its one definition, reached by tests through the `repo` fixture (and by
# pytest_generate_tests below, which runs at collection time, before any fixture).
REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _shared_dir() -> Path:
    """../shared beside the checkout (SKINHPC_SHARED overrides)."""
    return Path(os.environ.get("SKINHPC_SHARED", REPO.parent / "shared")).resolve()


def _missing(what: str) -> None:
    """Shared inputs absent: a failure in CI (it must run beside ../shared), a skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what}: CI must run beside ../shared (or set SKINHPC_SHARED)")
    pytest.skip(f"{what} (set SKINHPC_SHARED)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`shipped_job`: one test per jobs/*.yaml of the checkout (a file name), found at collection."""
    if "shipped_job" in metafunc.fixturenames:
        metafunc.parametrize("shipped_job", sorted(p.name for p in (REPO / "jobs").glob("*.yaml")))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test` runs two workers), every test of the one SLURM dev cluster
    runs on one worker, one at a time (`--dist loadgroup`): they share the node's CPUs, its queue
    and the session's cluster start/stop; the rest spread over the other worker. tryfirst: xdist
    turns the group mark into the node id in its own hook of this name, so the mark must be on
    the item before that runs (added after, it is silently ignored)."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a SLURM test that xdist did not group: xdist groups by a ``@slurm`` suffix it writes
    into the node id, which pytest 9.2 drops without a word (pytest-xdist#1386, hence the pin in
    setup.cfg); ungrouped, two workers start, share and stop the one cluster at once and one
    test's jobs land in another's queue checks."""
    grouping = os.environ.get("PYTEST_XDIST_WORKER") and item.config.getvalue("loadgroup")
    if grouping and item.get_closest_marker("slurm") and not item.nodeid.endswith("@slurm"):
        pytest.fail(f"--dist loadgroup did not group this SLURM test: pytest {pytest.__version__} drops "
                    "xdist's group suffix (pytest-xdist#1386); install setup.cfg's pins or TEST_WORKERS=0",
                    pytrace=False)


# --------------------------------------------------------------------------- where things are
@pytest.fixture(scope="session")
def repo() -> Path:
    """The checkout root (subprocess cwd/PYTHONPATH, shipped files)."""
    return REPO


@pytest.fixture(scope="session")
def in_ci() -> bool:
    """CI=true: what a developer's machine may skip (no data, no browser, no root) must fail."""
    return IN_CI


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _shared_dir()


@pytest.fixture(scope="session")
def ham_root(shared_dir: Path) -> Path:
    """The shared HAM10000 subset (3,333 images and metadata.csv)."""
    ham = shared_dir / "data" / "ham10000"
    if not (ham / "metadata.csv").exists():
        _missing(f"shared HAM10000 data not found at {ham}")
    return ham


@pytest.fixture(scope="session")
def weights_path(shared_dir: Path) -> Path:
    """The reference tf_efficientnet_lite0 ImageNet state dict (a file the package weights must equal)."""
    path = shared_dir / "weights" / "tf_efficientnet_lite0.in1k.pth"
    if not path.exists():
        _missing(f"reference weights not found at {path}")
    return path


@pytest.fixture(scope="session")
def shell_env() -> Callable[[], dict[str, str]]:
    """``shell_env() -> dict``: this environment as a user's shell would hand it to a skinhpc
    command, without what ``import skinhpc`` in this test process exported (allocator variables,
    the thread count and its mark) or the switch, so a child must set them up itself."""
    def env() -> dict[str, str]:
        env = runtime.without_setup(os.environ)
        env.pop("SLURM_CPUS_PER_TASK", None)  # a test run inside a SLURM allocation: not the user's shell
        return env
    return env


# --------------------------------------------------------------------------- tiny jobs
FAST_PREPROCESS = {"size": 40, "hair": {"enabled": False}, "clahe": {"enabled": False},
                   "corners": {"enabled": False}}


def _tiny_job(tmp_path: Path, ham_root: Path, **over: Any) -> JobSpec:
    """A real job on a small subset of the shared images with a tiny timm model: seconds on a CPU."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "results_dir": str(tmp_path / "results"),
        "seeds": [1],
        "data": {
            "sources": [{"kind": "ham10000", "root": str(ham_root), "images": ["images"]}],
            "subset": 240,
            "audit": {"near_duplicates": False},
        },
        "preprocess": {"size": 48, "workers": 1},
        "model": {"name": "resnet10t", "pretrained": "none"},
        "train": {
            "phases": [{"name": "all", "epochs": 2, "train": "all", "lr": 3e-3}],
            "batch_size": 32,
            "num_workers": 0,
            "augment": 0.0,
        },
        "reduce": {"tta": ["identity", "hflip"], "bootstrap": 50, "gradcam": 1},
        "cluster": {"executor": "debug"},
        "base_dir": str(tmp_path),
    }
    return from_dict(deep_merge(raw, over))


def _prepared_job(spec: JobSpec) -> JobPaths:
    """The job's folder as the launch and prepare stages leave it: job.yaml, tables, cache."""
    from skinhpc.data.prepare import build_cache, finalize, prepare_tables  # deferred: cv2 (~3 s)

    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(paths.job_yaml, dump_yaml(spec))
    prepare_tables(spec, paths)
    build_cache(spec, paths)
    finalize(spec, paths)
    return paths


def _prepared_tiny_job(tmp_path: Path, ham_root: Path, subset: int = 400,
                       **over: Any) -> tuple[JobSpec, JobPaths]:
    """A tiny job (40 px, no hair/CLAHE/corner steps) with tables and cache built by the real
    prepare stage: what the training tests start from."""
    over.setdefault("preprocess", copy.deepcopy(FAST_PREPROCESS))
    data = {"subset": subset, "audit": {"near_duplicates": False}, **over.pop("data", {})}
    spec = _tiny_job(tmp_path, ham_root, data=data, **over)
    return spec, _prepared_job(spec)


@pytest.fixture(scope="session")
def tiny_job() -> Callable[..., JobSpec]:
    """``tiny_job(tmp_path, ham_root, **overrides) -> JobSpec`` (overrides deep-merged)."""
    return _tiny_job


@pytest.fixture
def tiny_spec(tmp_path: Path, ham_root: Path) -> JobSpec:
    return _tiny_job(tmp_path, ham_root)


@pytest.fixture(scope="session")
def prepared_job() -> Callable[[JobSpec], JobPaths]:
    """``prepared_job(spec) -> JobPaths``: job.yaml, tables and cache written by the real stages."""
    return _prepared_job


@pytest.fixture(scope="session")
def prepared_tiny_job() -> Callable[..., tuple[JobSpec, JobPaths]]:
    """``prepared_tiny_job(tmp_path, ham_root, subset=400, **overrides) -> (spec, paths)``."""
    return _prepared_tiny_job


@pytest.fixture
def fast_preprocess() -> dict[str, Any]:
    """The preprocess section of prepared_tiny_job (40 px, no hair/CLAHE/corners); a fresh copy."""
    return copy.deepcopy(FAST_PREPROCESS)


@pytest.fixture(scope="session")
def finished_job(tmp_path_factory: pytest.TempPathFactory, ham_root: Path) -> tuple[JobSpec, JobPaths]:
    """ONE trained and reduced tiny job for the session (prepare, both members trained in-process,
    reduce), shared by the predict, export and tracking tests: one seed times a two-point
    ``train.weight_decay`` sweep, so two members that differ in an override.  The reduce's extras
    (ONNX, MLflow, Grad-CAM, bootstrap) are off.  Read-only: a test that writes in the job folder
    (or in its results_dir) works on ``copy_finished_job(dest)``."""
    from skinhpc.outputs.publish import reduce  # deferred: torch, not needed by most tests
    from skinhpc.train.member import train_member  # deferred: torch, not needed by most tests

    spec = _tiny_job(tmp_path_factory.mktemp("finished"), ham_root, seeds=[1],
                     sweep={"grid": {"train.weight_decay": [0.0, 0.01]}},
                     reduce={"gate": 0.0, "onnx": False, "mlflow": {"enabled": False}, "bootstrap": 0,
                             "gradcam": 0})
    paths = _prepared_job(spec)
    for m in plan_members(spec):
        train_member(spec, paths, m)
    reduce(spec, paths)
    return spec, paths


@pytest.fixture(scope="session")
def copy_finished_job(finished_job: tuple[JobSpec, JobPaths]) -> Callable[[Path], tuple[JobSpec, JobPaths]]:
    """``copy_finished_job(dest) -> (spec, paths)``: a private copy of the finished job folder at
    ``dest/<name>`` (file times kept), for a test that writes in it.  The spec is the original's,
    so the copy's paths are passed explicitly, as the CLI does for a results folder, and what the
    spec locates by itself (the shared cache, the default MLflow store in results_dir) stays the
    original's."""
    spec, paths = finished_job

    def copy_to(dest: Path) -> tuple[JobSpec, JobPaths]:
        target = dest / paths.root.name
        shutil.copytree(paths.root, target)
        return spec, JobPaths(target)

    return copy_to


@pytest.fixture
def png_bomb(tmp_path: Path) -> Path:
    """A 1-bit PNG of 10,000 x 10,000 pixels, all zero: ~25 KB on disk, 100 M pixels (300 MB as
    RGB), over Pillow's MAX_IMAGE_PIXELS; written row by row, never held decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    side = 10_000
    comp = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- SLURM dev cluster
# Low enough that a 4-member job must be split, high enough for 3-member arrays in one.
TEST_MAX_ARRAY_SIZE = os.environ.get("SKINHPC_TEST_MAX_ARRAY_SIZE", "3")


@dataclass
class SlurmCluster:
    state: Path
    max_array_size: int
    started_here: bool


def _slurm_up() -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The single-node SLURM dev cluster (slurm/devcluster/up.sh).  A cluster already up is reused
    and left running; one this session started is stopped at the end.  Outside CI a machine that
    cannot run it (no root, no apt) skips with the reason; in CI that is a failure, because the
    SLURM tests are the point."""
    devcluster = REPO / "slurm" / "devcluster"
    state = Path(os.environ.get("SKINHPC_DEVCLUSTER", "/tmp/skinhpc-devcluster"))
    was_up = _slurm_up()
    env = dict(os.environ, SKINHPC_DEVCLUSTER=str(state), SKINHPC_MAX_ARRAY_SIZE=TEST_MAX_ARRAY_SIZE)
    reason = ""
    if os.geteuid() != 0 and not was_up:
        reason = "the dev cluster needs root (daemons, /etc/slurm)"
    else:
        try:
            r = subprocess.run(["bash", str(devcluster / "up.sh")], env=env, capture_output=True, text=True,
                               timeout=600)
            if r.returncode != 0:
                reason = f"up.sh failed (rc {r.returncode}): {(r.stdout + r.stderr).strip()[-800:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"up.sh could not run: {e}"
    if reason and not (was_up and _slurm_up()):
        if IN_CI:
            pytest.fail(f"SLURM dev cluster unavailable in CI: {reason}")
        pytest.skip(f"SLURM dev cluster unavailable: {reason}")
    cluster = SlurmCluster(state=state, max_array_size=scontrol_max_array_size() or 1001, started_here=not was_up)
    yield cluster
    if cluster.started_here:
        subprocess.run(["bash", str(devcluster / "down.sh")], env=env, capture_output=True, timeout=120)


def _queued_job_ids() -> set[str]:
    """The jobs in the queue by job id (an array's tasks folded into the array's id), so a check
    that a launch submitted nothing is not upset by an earlier test's jobs starting or ending."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    return {line.split("_")[0] for line in out.split()}


@pytest.fixture(scope="session")
def queued_job_ids() -> Callable[[], set[str]]:
    """``queued_job_ids() -> set``: job ids in the dev cluster's queue now (array tasks folded)."""
    return _queued_job_ids


def _fast_overrides(cache_dir: Path, **over: Any) -> dict[str, Any]:
    """tiny_job made quicker still: 1 epoch of 2 steps at 32 px, no bootstrap/ONNX/MLflow,
    and a cache shared by the session so only the first job pays for preprocessing."""
    base = {
        "data": {"subset": 120},
        "preprocess": {"size": 32, "cache_dir": str(cache_dir)},
        "train": {"phases": [{"name": "all", "epochs": 1, "train": "all", "lr": 3e-3}],
                  "max_steps_per_epoch": 2, "eval_batch_size": 64},
        "reduce": {"tta": ["identity"], "bootstrap": 0, "gradcam": 0, "onnx": False,
                   "temperature": False, "mlflow": {"enabled": False}},
        "cluster": {"cpus_per_gpu": 1, "mem_gb": 1, "time_min": 15, "prepare_time_min": 15,
                    "reduce_time_min": 15},
    }
    return deep_merge(base, over)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def job_writer(tmp_path: Path, ham_root: Path, shared_cache: Path) -> Callable[..., Path]:
    """``job_writer(name="tiny", **overrides) -> Path`` of a fast tiny job file (resolved, no
    includes) in tmp_path, for launch's command line."""

    def make(name: str = "tiny", **over: Any) -> Path:
        spec = _tiny_job(tmp_path, ham_root, **_fast_overrides(shared_cache, name=name, **over))
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_yaml(spec))
        return path

    return make
