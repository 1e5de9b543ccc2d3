"""Comparing the identity a file carries (done.json, a checkpoint's meta) with a member's.

Its own torch-free module so that :mod:`skinhpc.io.state` (launch, status: no torch) and
:mod:`skinhpc.io.checkpoint` (torch) share it without importing each other at module level.
"""

from __future__ import annotations

from typing import Any


def identity_problem(found: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The first identity key where ``found`` differs from ``want`` (worded), or None."""
    for key, value in want.items():
        if found.get(key) != value:
            return f"{key} is {found.get(key)!r}, this member's is {value!r}"
    return None
