"""Where things are: the checkout, the shared data and weights beside it, CI or not, the
environment a user's shell hands a command, and the shipped jobs (``shipped_job``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from skinhpc import runtime

# The checkout root: its one definition, reached by tests through the `repo` fixture (and by
# pytest_generate_tests below, which runs at collection time, before any fixture).
REPO = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="session")
def download_root_overrides(ham_root: Path) -> Callable[[Path], list[str]]:
    """``download_root_overrides(job) -> ['data.sources.K.root=<shared HAM10000>', ...]``: a shipped
    job's sources that point at a download folder (data/ham10000, data/isic2019, data/isic2020),
    aimed at the shared copy, so a dry run (which only checks that the folders exist) runs here."""
    import re

    from skinhpc.config import load_raw

    def overrides(job: Path) -> list[str]:
        sources = load_raw(job).get("data", {}).get("sources", [])
        return [f"data.sources.{i}.root={ham_root}" for i, p in enumerate(sources)
                if re.search(r"(^|/)data/(ham10000|isic2019|isic2020)$", str(p.get("root", "")))]
    return overrides
