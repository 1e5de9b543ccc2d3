"""pytest-xdist: every test of the one SLURM dev cluster on one worker, one at a time."""

from __future__ import annotations

import os

import pytest


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
