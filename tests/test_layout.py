"""io/layout.py owns the results-folder layout: every file name and place is declared there once.

``test_no_results_path_joined_outside_layout`` is a static check over the package's source. What it
catches: a ``/`` join, ``.joinpath(...)`` or ``os.path.join(...)`` whose left/first operand is

- an attribute named like a JobPaths / MemberPaths / CachePaths path (``paths.root``,
  ``self.paths.ensemble``, ``paths.member(m).root``, ``spec.cache_dir``, ...), or
- a local name assigned, in the same function or module body, from such an attribute or a join
  of one (``ens = paths.ensemble`` ... ``ens / "metrics.json"``).

What it cannot catch: a path passed through a function argument under another name
(``def f(folder): folder / "x"`` called with ``paths.submitit``), a ``str`` built with f-strings or
``+``, ``Path.with_name``/``with_suffix`` siblings, an attribute that happens to share no name with
the layout's, or the folder roots themselves (``JobSpec.job_dir``/``cache_dir``, declared in
config/schema.py, the layer below io). It is a tripwire for the common regression, not a proof.
"""

from __future__ import annotations

import ast
from pathlib import Path

from skinhpc.io.layout import CachePaths, JobPaths, MemberPaths

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "skinhpc"
LAYOUT = PACKAGE / "io" / "layout.py"

# the attribute names that hold a results path: every property of the layout classes, their
# roots, and the spec's cache folder
PATH_ATTRS = {name for cls in (JobPaths, MemberPaths, CachePaths) for name, v in vars(cls).items()
              if isinstance(v, property)} | {"root", "cache_dir"}


def _is_layout_path(node: ast.AST, aliases: set[str]) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in PATH_ATTRS
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):  # a join of one, itself flagged
        return _is_layout_path(node.left, aliases)
    return isinstance(node, ast.Name) and node.id in aliases


def _scopes(tree: ast.Module) -> list[ast.AST]:
    return [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]


def _own_nodes(scope: ast.AST) -> list[ast.AST]:
    """The nodes of ``scope`` not inside a nested function (those are scopes of their own)."""
    out, todo = [], list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        out.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return out


def hand_joins(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: expression`` for each join of a layout path found in ``source``."""
    found = []
    for scope in _scopes(ast.parse(source, filename)):
        nodes = _own_nodes(scope)
        aliases = {t.id for n in nodes if isinstance(n, ast.Assign) and _is_layout_path(n.value, set())
                   for t in n.targets if isinstance(t, ast.Name)}
        for n in nodes:
            joined = None
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div):
                joined = n.left
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                if n.func.attr == "joinpath":
                    joined = n.func.value
                elif ast.unparse(n.func) == "os.path.join" and n.args:
                    joined = n.args[0]
            if joined is not None and _is_layout_path(joined, aliases):
                found.append(f"{filename}:{n.lineno}: {ast.unparse(n)}")
    return sorted(set(found))


def test_no_results_path_joined_outside_layout():
    found = []
    for f in sorted(PACKAGE.rglob("*.py")):
        if f != LAYOUT:
            found += hand_joins(f.read_text(), str(f.relative_to(REPO)))
    assert not found, ("results paths joined by hand; give each a named property or method in "
                       "skinhpc/io/layout.py and call it:\n" + "\n".join(found))


def test_the_check_catches_what_it_claims():
    """The check above could fail: it flags each form it documents and passes their layout calls."""
    bad = '''
import os
def f(spec, paths, self):
    a = paths.ensemble / "metrics.json"
    b = self.paths.root / "state"
    c = paths.member(3).root / "x.pt"
    d = spec.cache_dir / f"{i}.npy"
    e = paths.submitit.joinpath("driver.log")
    g = os.path.join(paths.members_dir, "001")
    ens = paths.ensemble
    h = ens / "report.html"
    onnx = paths.ensemble / "onnx"
    k = onnx / "verify.json"
'''
    assert len(hand_joins(bad)) == 9, hand_joins(bad)
    good = '''
def f(spec, paths, out_dir, root):
    a = paths.metrics
    b = paths.stage_state("reduce")
    c = out_dir / "report.html"      # a folder the user named: not a results path
    d = root / "metadata.csv"        # a name not bound from the layout
    def inner():
        ens = 1
    return ens / 2                   # the alias belongs to inner(), not here
'''
    assert hand_joins(good) == []


def test_file_names_and_places_are_unchanged():
    """The layout is the contract between stages and with existing results folders: moving a file
    breaks resume of every job already on disk."""
    p = JobPaths("/r")
    expected = {
        p.job_yaml: "job.yaml", p.manifest: "manifest.csv", p.splits: "splits.csv",
        p.audit: "audit.json", p.duplicates: "duplicates.json",
        p.tables_meta: "prepare.tables.json", p.sources_record: "prepare.sources.json",
        p.prepare_reports: "prepare", p.shard_report("abc", 2, 4): "prepare/abc-2-of-4.json",
        p.prepare_done: "prepare.done.json", p.lock: ".lock",
        p.state_dir: "state", p.stage_state("reduce"): "state/reduce.json",
        p.stage_error("reduce"): "state/reduce.error.txt",
        p.submitit: "submitit", p.driver_plan: "submitit/plan.pkl", p.driver_log: "submitit/driver.log",
        p.array_template("<uuid>"): "submitit/array_<uuid>.pkl", p.launches: "launches.jsonl",
        p.kept_spec("20260101-000000"): "job.20260101-000000.yaml",
        p.ensemble_complete: "ensemble/.complete", p.thresholds: "ensemble/thresholds.json",
        p.metrics: "ensemble/metrics.json", p.report: "ensemble/report.html",
        p.predictions("test"): "ensemble/predictions_test.csv", p.plots_dir: "ensemble/plots",
        p.gradcam_dir: "ensemble/gradcam", p.in_ensemble("plots/roc.png"): "ensemble/plots/roc.png",
        p.onnx_dir: "ensemble/onnx", p.onnx_member("007"): "ensemble/onnx/member_007.onnx",
        p.onnx_ensemble: "ensemble/onnx/ensemble.onnx", p.onnx_file("x.onnx"): "ensemble/onnx/x.onnx",
        p.gradcam_image("a.png"): "ensemble/gradcam/a.png", p.onnx_verify: "ensemble/onnx/verify.json",
        p.member(7).best: "members/007/best.pt", p.member(7).done: "members/007/done.json",
    }
    assert {str(k.relative_to("/r")): v for k, v in expected.items()} == {v: v for v in expected.values()}
    c = CachePaths("/c")
    assert (str(c.entry("ISIC_1")), str(c.source("ISIC_1")), str(c.config)) == (
        "/c/ISIC_1.npy", "/c/ISIC_1.source.json", "/c/preprocess.json")
    assert CachePaths.source_beside(c.entry("ISIC_1")) == c.source("ISIC_1")


def test_a_staged_reduce_writes_every_ensemble_file_to_its_staging_folder():
    """The reduce writes through ``staging_ensemble``: a file of ensemble/ declared relative to
    the root instead would land in the live folder, outside the atomic commit."""
    staged = JobPaths("/r").staging_ensemble("/tmp/stage")
    for f in (staged.ensemble_complete, staged.thresholds, staged.metrics, staged.report,
              staged.predictions("val"), staged.plots_dir, staged.gradcam_dir, staged.onnx_verify,
              staged.onnx_ensemble, staged.onnx_member("000"), staged.in_ensemble("plots/x.png")):
        assert f.is_relative_to("/tmp/stage"), f
    assert staged.job_yaml == Path("/r/job.yaml")


def test_shard_reports_are_found_by_the_name_they_are_written_under(tmp_path: Path):
    p = JobPaths(tmp_path)
    p.prepare_reports.mkdir()
    for shard, n in ((0, 2), (1, 2), (0, 1)):
        p.shard_report("abc", shard, n).write_text("{}")
    p.shard_report("other", 0, 1).write_text("{}")
    (p.prepare_reports / "abc-x-of-2.json").write_text("{}")
    assert sorted(p.shard_reports("abc")) == [(0, 1, p.shard_report("abc", 0, 1)),
                                             (0, 2, p.shard_report("abc", 0, 2)),
                                             (1, 2, p.shard_report("abc", 1, 2))]
