"""Every figure the reports show, each drawn by one function both reports call (the reduce's
report from its PNG files, ``skinhpc evaluate``'s in memory), and the reduce's PNG files.

Every number drawn comes from :mod:`skinhpc.metrics` (curves) or from the reduce's summary
(confusion matrices, reliability, risk-coverage); the malignant question of a multiclass job is
:func:`skinhpc.metrics.to_binary`, the same view the reduce scored.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skinhpc import metrics
from skinhpc.config import JobSpec, Member
from skinhpc.io.atomic import atomic_path
from skinhpc.outputs.report.pieces import fmt

if TYPE_CHECKING:
    from skinhpc.ensemble.sets import Split


def binary_scores(spec: JobSpec, split: Split) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(y, ensemble score, member scores) of the malignant question."""
    if spec.data.task == "binary":
        return split.y, split.ensemble[:, 1], [m[:, 1] for m in split.members]
    names, mal = spec.class_names, spec.data.malignant
    return (metrics.to_binary_labels(split.y, names, mal), metrics.to_binary(split.ensemble, names, mal),
            [metrics.to_binary(m, names, mal) for m in split.members])


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (the figure is closed): what a report inlines or a file holds."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_png(fig: Any, path: Path) -> Path:
    """The figure as a PNG file, written atomically (a report never inlines half a file)."""
    data = png_bytes(fig)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files, never a window (batch nodes have no display)
    import matplotlib.pyplot as plt

    return plt


def _axes() -> tuple[Any, Any]:
    return _pyplot().subplots(figsize=(5, 4.5))


# (legend label, labels, scores) of a thin curve beside the ensemble's: a member, a class vs rest
Curve = tuple[str, np.ndarray, np.ndarray]
# (x, y, legend label) of the operating point
Point = tuple[float, float, str]


def _curves(ax: Any, points: Any, keys: tuple[str, str, str], y: np.ndarray, score: np.ndarray,
            label: str, others: Sequence[Curve]) -> dict[str, Any]:
    """Draw ``others`` thin, then ``score`` thick, each with its area in the legend (a curve that is
    undefined, one class only, is left out); returns the thick curve's points (``points``:
    :func:`skinhpc.metrics.roc_points` or ``pr_points``; ``keys``: its x, y and area keys)."""
    x, yk, area = keys
    for name, yo, so in others:
        c = points(yo, so)
        if c[area] is not None:
            ax.plot(c[x], c[yk], lw=1, alpha=0.6, label=f"{name} ({fmt(c[area])})")
    c = points(y, score)
    if c[area] is not None:
        ax.plot(c[x], c[yk], lw=2.5, color="black", label=f"{label} ({fmt(c[area])})")
    return c


def roc_figure(y: np.ndarray, score: np.ndarray, title: str, label: str = "ensemble",
               others: Sequence[Curve] = (), point: Point | None = None) -> Any:
    """ROC of ``score`` (thick) with ``others`` (thin) and the operating point; a curve that is
    undefined (one class only) is left out and the title says so."""
    fig, ax = _axes()
    c = _curves(ax, metrics.roc_points, ("fpr", "tpr", "auc"), y, score, label, others)
    if point is not None:
        ax.plot([point[0]], [point[1]], "o", color="tab:red", label=point[2])
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02),
           title=title + ("" if c["auc"] is not None else " (one class only: undefined)"))
    ax.legend(fontsize=7, loc="lower right")
    return fig


def pr_figure(y: np.ndarray, score: np.ndarray, title: str, label: str = "ensemble",
              others: Sequence[Curve] = (), point: Point | None = None) -> Any:
    """Precision-recall of ``score`` (thick) with ``others`` (thin), the prevalence (a classifier
    that ignores the image) and the operating point."""
    fig, ax = _axes()
    c = _curves(ax, metrics.pr_points, ("recall", "precision", "ap"), y, score, label, others)
    if c.get("prevalence") is not None:
        ax.axhline(c["prevalence"], ls=":", color="grey", label=f"prevalence {c['prevalence']:.2f}")
    if point is not None:
        ax.plot([point[0]], [point[1]], "o", color="tab:red", label=point[2])
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize=7, loc="lower left")
    return fig


def confusion_figure(panels: Sequence[tuple[Any, str]], labels: Sequence[str]) -> Any:
    """Confusion matrices side by side, ``(matrix, title)`` each: all cases, then those the gate kept."""
    fig, axes = _pyplot().subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (mat, title) in zip(axes[0], panels, strict=True):
        confusion_ax(ax, mat, labels, title)
    fig.tight_layout()
    return fig


def reliability_figure(rel: dict[str, Any], title: str) -> Any:
    """Reliability diagram from ``metrics.reliability``."""
    fig, ax = _axes()
    edges = np.asarray(rel["bin_edges"], dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if a is None else a for a in rel["bin_accuracy"]], dtype=float)
    ax.bar(centers, np.nan_to_num(acc), width=np.diff(edges), edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.set(xlabel="confidence (top class)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    return fig


def risk_coverage_figure(curves: Sequence[tuple[dict[str, Any], str | None, str]], title: str,
                         gate: float = 0.0, coverage: float | None = None) -> Any:
    """Error rate among the kept cases against coverage, ``(metrics.risk_coverage, legend label,
    colour)`` each, with the gate's coverage marked when there is a gate."""
    fig, ax = _axes()
    for rc, label, color in curves:
        ax.step(rc["coverage"], rc["risk"], where="post", color=color, label=label)
    if gate > 0 and coverage is not None:
        ax.axvline(coverage, ls="--", color="tab:red", label=f"gate {gate:g}: coverage {coverage:.1%}")
    ax.set(xlabel="coverage (fraction not referred)", ylabel="error rate among kept", xlim=(0, 1), title=title)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7)
    return fig


def confusion_ax(ax: Any, mat: Any, labels: Sequence[str], title: str) -> None:
    """One confusion matrix with its counts written in the cells (an empty matrix when absent)."""
    arr = np.asarray(mat if mat is not None else np.zeros((len(labels), len(labels))), dtype=int)
    ax.imshow(arr, cmap="Blues")
    top = arr.max() if arr.size else 0
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def make_plots(spec: JobSpec, summary: dict[str, Any], val: Split, test: Split,
               members: Sequence[Member], out_dir: Path) -> dict[str, Path]:
    """ROC, PR, confusion matrices, reliability and risk-coverage PNGs of the test split."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    y, p, member_scores = binary_scores(spec, test)
    what = "malignant vs benign" + ("" if spec.data.task == "binary" else " (sum of malignant classes)")
    others = [(f"member {m.name}", y, s) for m, s in zip(members, member_scores, strict=True)]
    cm, rel, rc = summary["confusion"], summary["reliability"], summary["risk_coverage"]
    figs = {
        "roc": roc_figure(y, p, f"ROC, test: {what}", others=others),
        "pr": pr_figure(y, p, f"Precision-recall, test: {what}", others=others),
        "confusion": confusion_figure(
            [(cm["at_threshold"], "all test cases at the threshold"),
             (cm["gated"], f"kept by the gate {spec.reduce.gate:g}: coverage {cm['coverage']:.1%}")], cm["labels"]),
        "reliability": reliability_figure(
            rel, f"Reliability, test (ECE {fmt(rel.get('ece'))}, T={summary.get('temperature', 1):.2f})"),
        "risk_coverage": risk_coverage_figure(
            [(rc, None, "black")], f"Risk-coverage, test (AURC {fmt(rc.get('aurc'))})",
            spec.reduce.gate, summary["test"]["gated"].get("coverage")),
    }
    plots = {name: save_png(fig, out_dir / f"{name}.png") for name, fig in figs.items()}
    for stale in set(out_dir.glob("*.png")) - set(plots.values()):
        stale.unlink(missing_ok=True)
    return plots
