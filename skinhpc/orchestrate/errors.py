"""The errors a launch raises for reasons the user can fix (the CLI maps them to exit codes)."""

from __future__ import annotations


class LaunchError(RuntimeError):
    """A launch refused for a reason the user can fix; the message says how, in one line."""


class SubmitError(LaunchError):
    """The scheduler refused a submission; the launch was undone (the message says what)."""
