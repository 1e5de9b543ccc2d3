"""Every command ends an error with one line and a documented exit code, a traceback only with
--debug; the job folder's lock refuses a second command at once."""

from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from skinhpc.cli.errors import EXIT_CLOSED_PIPE, EXIT_CODES
from skinhpc.cli.main import main as skinhpc_main
from skinhpc.config import dump_yaml, load_spec
from skinhpc.io.layout import JobPaths
from skinhpc.io.lock import job_lock

pytestmark = pytest.mark.faults
PY = sys.executable


def cli(*args: str, module: str = "skinhpc.cli") -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", module, *args], capture_output=True, text=True, timeout=120)


def test_spec_error_is_one_line_exit_2_traceback_only_with_debug(job_writer):
    job = job_writer()
    job.write_text(job.read_text().replace("batch_size:", "batch_sise:", 1))
    for module, args in (("skinhpc.launch", [str(job)]), ("skinhpc.cli", ["launch", str(job)]),
                         ("skinhpc.cli", ["spec", str(job)])):
        r = cli(*args, module=module)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "batch_sise" in lines[0] and str(job) in lines[0], r.stderr
    r = cli("launch", str(job), "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr and "batch_sise" in r.stderr


def test_environment_error_is_one_line_exit_1(job_writer):
    """A results folder the process may not create (sysfs refuses mkdir, even to root)."""
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    job = job_writer()
    r = cli("launch", str(job), "results_dir=/sys/skinhpc-results", "--executor", "debug")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and "/sys/skinhpc-results" in lines[0] and "Traceback" not in r.stderr


def test_missing_job_folder_and_unknown_command(tmp_path):
    for args in (["status", str(tmp_path / "nope")], ["cancel", str(tmp_path / "nope")], ["nosuch"]):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_locked_job_folder_refuses_cancel_and_launch(job_writer):
    job = job_writer()
    spec = load_spec(job)
    paths = JobPaths(spec.job_dir)
    paths.root.mkdir(parents=True)
    paths.job_yaml.write_text(dump_yaml(spec))
    with job_lock(paths, "reduce"):  # held by this process: the commands below run in others
        for args in (["cancel", str(paths.root)], ["launch", str(job), "--executor", "debug"]):
            r = cli(*args)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 3 and len(lines) == 1, r.stderr
            assert "busy" in lines[0] and "reduce" in lines[0] and str(paths.root) in lines[0]
    r = cli("cancel", str(paths.root))  # released when its holder let go
    assert r.returncode == 0 and "nothing was running" in r.stdout


@pytest.mark.parametrize("argv", [
    ["status"], ["status", "a", "b"], ["cancel", "--grace", "soon", "x"], ["launch", "--bogus", "x.yaml"],
    ["reduce"], ["predict"], ["data", "download", "nosuch", "--to", "x"], ["data", "nosuch"], ["spec", "--nope"],
    ["train"], ["evaluate"], ["prefetch", "--nope"],
])
def test_usage_error_is_one_line_exit_2(argv: list[str], capsys) -> None:
    """argparse's own refusal (usage block + error line, two lines) is one line naming the
    command's --help; --help itself still prints the usage and exits 0."""
    assert skinhpc_main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"skinhpc {argv[0]}: error: "), err
    assert "--help" in lines[0] and not out


def test_help_still_works(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        skinhpc_main(["status", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: skinhpc status")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on return: nothing listens there


def test_same_error_same_exit_code_in_every_command(job_writer, tmp_path):
    """A DataError ends `skinhpc data download` (the server refuses the connection) and
    `skinhpc train` (the data folder is missing) alike: one line, exit 2 (download said 1)."""
    missing = tmp_path / "no-such-folder"
    job = job_writer()
    runs = {
        "download": cli("data", "download", "ham10000", "--to", str(tmp_path / "dl"),
                        "--base-url", f"http://127.0.0.1:{_free_port()}"),
        "train": cli("train", str(job), f"data.sources=[{{kind: ham10000, root: {missing}}}]"),
    }
    for name, r in runs.items():
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.stderr)
        assert lines[-1].startswith(f"skinhpc {name.replace('download', 'data')}: error: "), (name, r.stderr)
        assert "Traceback" not in r.stderr
    assert "cannot read the dataset's file list" in runs["download"].stderr
    assert str(missing) in runs["train"].stderr


def test_exit_code_table_names_real_exception_classes():
    """Every row of the one table resolves to an exception class (a typo would never match)."""
    for module, name, code in EXIT_CODES:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception) and code in (1, 2, 3), (module, name)


@pytest.mark.parametrize("command", ["status", "spec"])
def test_closed_stdout_ends_quietly(command, job_writer, tmp_path):
    """`skinhpc status DIR | head -1` once head has gone: the reader's end of stdout is closed
    before the command writes (deterministic, unlike racing a real `head`): exit 141 as a Unix
    tool's shell reports, nothing on stderr (was: 'error: [Errno 32] Broken pipe', exit 1)."""
    args = ["spec"]
    if command == "status":
        spec = load_spec(job_writer())
        paths = JobPaths(spec.job_dir)
        paths.root.mkdir(parents=True)
        paths.job_yaml.write_text(dump_yaml(spec))
        args = ["status", str(paths.root)]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([PY, "-m", "skinhpc.cli", *args], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(write_end)
    assert r.returncode == EXIT_CLOSED_PIPE == 141, r.stderr
    assert r.stderr == ""
