"""Every command ends an error with one line and a documented exit code, a traceback only with
--debug; the job folder's lock refuses a second command at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
