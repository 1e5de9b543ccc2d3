"""The reduce's plots of the test split and the drawing pieces both reports share.

Every number drawn comes from :mod:`skinhpc.metrics` (curves) or from the reduce's summary
(confusion matrices, reliability, risk-coverage); the malignant question of a multiclass job is
:func:`skinhpc.metrics.to_binary`, the same view the reduce scored.
"""

from __future__ import annotations

import base64
import html
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


def save_png(fig: Any, path: Path) -> Path:
    """The figure as a PNG file, written atomically (a report never inlines half a file)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def reliability_fig(rel: dict[str, Any], title: str) -> Any:
    """Reliability diagram from ``metrics.reliability``: one drawing for both reports."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    edges = np.asarray(rel["bin_edges"], dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2
    acc = np.array([np.nan if a is None else a for a in rel["bin_accuracy"]], dtype=float)
    ax.bar(centers, np.nan_to_num(acc), width=np.diff(edges), edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
    ax.set(xlabel="confidence (top class)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    y, p, member_scores = binary_scores(spec, test)
    what = "malignant vs benign" + ("" if spec.data.task == "binary" else " (sum of malignant classes)")

    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        fn = metrics.roc_points if kind == "roc" else metrics.pr_points
        for m, s in zip(members, member_scores, strict=True):
            c = fn(y, s)
            xs, ys = (c["fpr"], c["tpr"]) if kind == "roc" else (c["recall"], c["precision"])
            score = c["auc"] if kind == "roc" else c["ap"]
            ax.plot(xs, ys, lw=1, alpha=0.6, label=f"member {m.name} ({fmt(score)})")
        c = fn(y, p)
        xs, ys = (c["fpr"], c["tpr"]) if kind == "roc" else (c["recall"], c["precision"])
        score = c["auc"] if kind == "roc" else c["ap"]
        ax.plot(xs, ys, lw=2.5, color="black", label=f"ensemble ({fmt(score)})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
            ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC, test: {what}")
        else:
            prev = c.get("prevalence")
            if prev is not None:
                ax.axhline(prev, ls=":", color="grey", label=f"prevalence {prev:.2f}")
            ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=f"Precision-recall, test: {what}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
        plots[kind] = save_png(fig, out_dir / f"{kind}.png")
        plt.close(fig)

    cm = summary["confusion"]
    labels = cm["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    titles = ["all test cases at the threshold",
              f"kept by the gate {spec.reduce.gate:g}: coverage {cm['coverage']:.1%}"]
    for ax, mat, title in zip(axes, (cm["at_threshold"], cm["gated"]), titles, strict=True):
        confusion_ax(ax, mat, labels, title)
    plots["confusion"] = save_png(fig, out_dir / "confusion.png")
    plt.close(fig)

    rel = summary["reliability"]
    fig = reliability_fig(
        rel, f"Reliability, test (ECE {fmt(rel.get('ece'))}, T={summary.get('temperature', 1):.2f})")
    plots["reliability"] = save_png(fig, out_dir / "reliability.png")
    plt.close(fig)

    rc = summary["risk_coverage"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.step(rc["coverage"], rc["risk"], where="post", color="black")
    gated = summary["test"]["gated"]
    if spec.reduce.gate > 0 and gated.get("coverage") is not None:
        ax.axvline(gated["coverage"], ls="--", color="tab:red", label=f"gate {spec.reduce.gate:g}")
        ax.legend(fontsize=8)
    ax.set(xlabel="coverage (fraction not referred)", ylabel="error rate among kept",
           xlim=(0, 1), title=f"Risk-coverage, test (AURC {fmt(rc.get('aurc'))})")
    plots["risk_coverage"] = save_png(fig, out_dir / "risk_coverage.png")
    plt.close(fig)
    stale = set(out_dir.glob("*.png")) - set(plots.values())
    for f in stale:
        f.unlink(missing_ok=True)
    return plots


def fig_img(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline PNG <img> (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


