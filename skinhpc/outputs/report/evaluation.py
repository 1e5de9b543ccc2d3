"""The report of ``skinhpc evaluate``: a trained job scored on another labelled dataset at its
validation operating point.

Same rules as the reduce's report: images inline, coverage beside every gated number, the
threshold's provenance spelled out, the label map.  The plots are drawn in memory from the
evaluation's own predictions (no PNG files are left beside the report); every number comes from
the evaluation's metrics or from :mod:`skinhpc.metrics`.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import skinhpc.outputs.report.figures as figures
import skinhpc.outputs.report.pieces as rh
from skinhpc import metrics as mx
from skinhpc.config import JobSpec
from skinhpc.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

EVAL_PROVENANCE = "chosen on the job's validation split, not refitted"


def _eval_arrays(spec: JobSpec, metrics: dict[str, Any], table: Any) -> dict[str, Any]:
    """Labels and probabilities of the scored rows, plus the malignant-vs-benign question.

    ``table`` is the evaluation's predictions of readable images (``label``, ``prob_*``);
    multiclass metrics carry the malignant view under ``metrics["malignant"]``, scored on the
    table's ``prob_malignant``, so the plots draw that same column (the label map is
    :func:`skinhpc.metrics.to_binary_labels`).
    """
    names = list(metrics.get("class_names") or spec.class_names)
    y = table["label"].to_numpy().astype(int)
    binary = spec.data.task == "binary"
    if binary:
        probs = table[["prob_benign", "prob_malignant"]].to_numpy(dtype=float)
        return {"names": names, "y": y, "probs": probs, "binary": True, "y_bin": y,
                "p_bin": probs[:, 1], "bin": metrics, "thr": metrics.get("threshold")}
    probs = table[[f"prob_{c}" for c in names]].to_numpy(dtype=float)
    if "prob_malignant" in table:
        p_bin = table["prob_malignant"].to_numpy(dtype=float)
    else:
        p_bin = mx.to_binary(probs, names, spec.data.malignant)
    mal = metrics.get("malignant") or {}
    return {"names": names, "y": y, "probs": probs, "binary": False,
            "y_bin": mx.to_binary_labels(y, names, spec.data.malignant), "p_bin": p_bin, "bin": mal or None,
            "thr": mal.get("threshold")}


def make_evaluation_plots(spec: JobSpec, metrics: dict[str, Any], table: Any) -> dict[str, str]:
    """ROC, PR, confusion (at the threshold and under the gate), reliability and risk-coverage
    of an evaluation, as inline ``<img>`` tags keyed by name (the reduce's figures, drawn from
    this evaluation's predictions)."""
    a = _eval_arrays(spec, metrics, table)
    y, probs, names, binary = a["y"], a["probs"], a["names"], a["binary"]
    yb, pb, bv, thr = a["y_bin"], a["p_bin"], a["bin"] or {}, a["thr"]
    what = "malignant vs benign" + ("" if binary else " (sum of malignant classes)")
    gate = float((metrics.get("gated") or {}).get("gate") or 0.0)
    at = f"threshold {rh.fmt(thr)} (validation)"
    figs: dict[str, tuple[Any, str]] = {}

    others = [] if binary else [(f"{c} vs rest", (y == k).astype(int), probs[:, k]) for k, c in enumerate(names)]
    roc_at = ((1 - bv["specificity"], bv["sensitivity"], at)
              if bv.get("sensitivity") is not None and bv.get("specificity") is not None else None)
    figs["roc"] = (figures.roc_figure(yb, pb, "ROC", f"ensemble, {what}", others, roc_at), "ROC curve")
    pr_at = ((bv["sensitivity"], bv["precision"], at)
             if bv.get("sensitivity") is not None and bv.get("precision") is not None else None)
    figs["pr"] = (figures.pr_figure(yb, pb, f"Precision-recall: {what}", point=pr_at), "precision-recall curve")

    def confusion_pair(view: dict[str, Any], labels: Sequence[str], at: str) -> Any:
        g = view.get("gated") or {}
        return figures.confusion_figure(
            [(view.get("confusion_matrix"), f"all {view.get('n')} cases {at}"),
             (g.get("confusion_matrix"), f"kept by the gate {gate:g}: coverage {rh.fmt(g.get('coverage'), True)} "
                                         f"({g.get('n_referred')} referred)")], labels)

    if binary:
        figs["confusion"] = (confusion_pair(metrics, names, f"at threshold {rh.fmt(thr)}"), "confusion matrices")
    else:
        figs["confusion"] = (confusion_pair(metrics, names, "(argmax)"), "confusion matrices")
        if bv:
            figs["confusion_malignant"] = (confusion_pair(bv, ["benign", "malignant"], f"at threshold {rh.fmt(thr)}"),
                                           "confusion matrices, malignant view")

    rel = mx.reliability(y, probs, 10)
    figs["reliability"] = (figures.reliability_figure(
        rel, f"Reliability (ECE {rh.fmt(rel.get('ece'))}, temperature from validation)"), "reliability diagram")

    rc = mx.risk_coverage(y, probs, threshold=thr if binary else None)
    curves = [(rc, f"{'decision at the threshold' if binary else 'class (argmax)'} (AURC {rh.fmt(rc.get('aurc'))})",
               "black")]
    if not binary and bv:
        rcm = mx.risk_coverage(yb, np.stack([1 - pb, pb], axis=1), threshold=thr)
        curves.append((rcm, f"malignant view (AURC {rh.fmt(rcm.get('aurc'))})", "tab:blue"))
    figs["risk_coverage"] = (figures.risk_coverage_figure(
        curves, "Risk-coverage", gate, (metrics.get("gated") or {}).get("coverage")), "risk-coverage curve")
    return {name: rh.inline_png(figures.png_bytes(fig), alt) for name, (fig, alt) in figs.items()}


def _eval_binary_headline(t: dict[str, Any], spec: JobSpec, scope: str) -> str:
    """Binary headline at the job's validation threshold (never refitted on this data)."""
    g = t.get("by_group")
    views = [t] + ([g] if g is not None else [])
    rows = rh.binary_rows(t, t.get("threshold"), spec.reduce.threshold, spec.reduce.target,
                          f"<b>{EVAL_PROVENANCE}</b>", g)
    rows += [
        ["accuracy"] + [rh.fmt(v.get("accuracy")) + rh.ci(v, "accuracy") for v in views],
        ["Brier score / ECE"] + [f"{rh.fmt(v.get('brier'))} / {rh.fmt(v.get('ece'))}" for v in views],
        ["images / prevalence", f"{t.get('n')} / {rh.fmt(t.get('prevalence'))}"]
        + ([f"{g.get('n')} groups / {rh.fmt(g.get('prevalence'))}"] if g is not None else []),
    ]
    return rh.table(rh.group_headers(f"metric ({scope})", g), rows, "headline") + rh.group_note(g)


def _eval_multiclass_headline(m: dict[str, Any], scope: str) -> str:
    """Macro figures, then per-class counts, AUCs and precision/recall."""
    g = m.get("by_group")
    views = [m] + ([g] if g is not None else [])
    rows = [["macro ROC-AUC (one-vs-rest)"] + [rh.fmt(v.get("auc_macro")) + rh.ci(v, "auc_macro") for v in views],
            ["macro PR-AUC"] + [rh.fmt(v.get("pr_auc_macro")) for v in views],
            ["balanced accuracy (argmax)"]
            + [rh.fmt(v.get("balanced_accuracy")) + rh.ci(v, "balanced_accuracy") for v in views],
            ["accuracy (argmax)"] + [rh.fmt(v.get("accuracy")) + rh.ci(v, "accuracy") for v in views],
            ["Brier score / ECE"] + [f"{rh.fmt(v.get('brier'))} / {rh.fmt(v.get('ece'))}" for v in views],
            ["images", rh.fmt(m.get("n"))] + ([f"{g.get('n')} groups"] if g is not None else [])]
    head = rh.table(rh.group_headers(f"metric ({scope})", g), rows, "headline") + rh.group_note(g)
    per = m.get("per_class") or {}
    counts = m.get("class_counts") or {}
    auc, ap = m.get("auc_per_class") or {}, m.get("pr_auc_per_class") or {}
    prow = [[html.escape(c), rh.fmt(counts.get(c)), rh.fmt(auc.get(c)), rh.fmt(ap.get(c)),
             rh.fmt((per.get(c) or {}).get("precision")), rh.fmt((per.get(c) or {}).get("recall")),
             rh.fmt((per.get(c) or {}).get("f1"))] for c in (m.get("class_names") or per)]
    return head + rh.table(["class", "n", "ROC-AUC (vs rest)", "PR-AUC", "precision", "recall", "F1"], prow)


def _eval_subgroups(spec: JobSpec, a: dict[str, Any], table: Any) -> str:
    """Subgroup tables from :func:`skinhpc.metrics.subgroups`, or why there are none."""
    cols = ("age", "sex", "site")
    if table is None or any(c not in table for c in cols):
        return "<p>The evaluation data has no sex/age/site columns: no subgroup analysis.</p>"
    sub = table[list(cols)].reset_index(drop=True)
    rows = mx.subgroups(a["y"], a["probs"], sub, threshold=a["thr"] if a["binary"] else None,
                        class_names=a["names"])
    if all(r["value"] == "unknown" for r in rows):  # the subgroup rule decides what is known
        return "<p>Sex, age and site are unknown for every image of this dataset: no subgroup analysis.</p>"
    note = "<p>Metrics of subgroups under 10 images are withheld (too small); every group is listed.</p>"
    out = note + rh.subgroup_table(rows, a["binary"])
    if not a["binary"] and a["bin"]:
        mrows = mx.subgroups(a["y_bin"], np.stack([1 - a["p_bin"], a["p_bin"]], axis=1), sub,
                             threshold=a["thr"], class_names=["benign", "malignant"])
        out += "<h3>Malignant vs benign view</h3>" + rh.subgroup_table(mrows, True)
    return out


def render_evaluation(spec: JobSpec, metrics: dict[str, Any], table: Any) -> str:
    """The evaluation report as one HTML string (images inlined)."""
    binary = spec.data.task == "binary"
    a = _eval_arrays(spec, metrics, table)
    model, data = str(metrics.get("model", "")), str(metrics.get("data", ""))
    data_name = Path(data).name or data
    scope = f"evaluation set {data_name}"
    title = f"skinhpc evaluation: {spec.name} on {data_name}"
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{rh.CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class=disclaimer><b>Medical disclaimer.</b> {rh.DISCLAIMER}</p>"]

    imgs = metrics.get("images") or {}
    counts = metrics.get("class_counts") or {}
    boot = metrics.get("bootstrap") or {}
    what = [
        ["model (job)", f"<b>{html.escape(spec.name)}</b>: {html.escape(model)}"],
        ["architecture / task", f"{html.escape(spec.model.name)} / {html.escape(spec.data.task)}"],
        ["dataset evaluated", f"<b>{html.escape(data)}</b>"],
        ["images", f"{imgs.get('total', metrics.get('n'))} total, {imgs.get('scored', metrics.get('n'))} scored, "
                   f"{imgs.get('unreadable', 0)} unreadable (left out of every metric)"],
        ["true classes", html.escape(", ".join(f"{k}: {v}" for k, v in counts.items()))],
        ["confidence intervals",
         f"95 % bootstrap, {boot.get('resamples')} resamples by {html.escape(str(boot.get('unit')))}"
         if boot else "none (bootstrap off)"],
    ]
    parts.append("<h2>What was evaluated</h2>")
    parts.append(rh.table(["what", "value"], what))
    thr_text = (f"decision threshold {rh.fmt(a['thr'])}" if binary
                else f"malignant-view threshold {rh.fmt(a['thr'])} (classes are the argmax)")
    parts.append(f"<p>Every image of the dataset is scored as test. Nothing was refitted on it: the "
                 f"{thr_text} was <b>{EVAL_PROVENANCE}</b>, and so were the calibration temperature and "
                 f"the referral gate, as a deployed model would use them.</p>")

    parts.append(f"<h2>Headline ({html.escape(scope)})</h2>")
    if binary:
        parts.append(_eval_binary_headline(metrics, spec, scope))
        views: list[tuple[str, dict[str, Any], bool]] = [("", metrics, True)]
    else:
        parts.append(_eval_multiclass_headline(metrics, scope))
        views = [("", metrics, False)]
        if a["bin"]:
            parts.append("<h3>Malignant vs benign view (sum of malignant class probabilities)</h3>")
            parts.append(_eval_binary_headline(a["bin"], spec, scope))
            views.append(("malignant view", a["bin"], True))

    parts.append("<h2>Malignant vs each benign class</h2>")
    parts.append(rh.benign_class_table([(scope, metrics.get("benign_classes") or {})]))

    parts.append("<h2>Referral gate: coverage beside every gated number</h2>")
    for label, view, vb in views:
        if label:
            parts.append(f"<h3>{html.escape(label)}</h3>")
        gate = float((view.get("gated") or {}).get("gate") or 0.0)
        parts.append(rh.gate_section(spec, view, vb, gate=gate, scope="evaluation"))

    parts.append(f"<h2>Subgroups ({html.escape(scope)})</h2>")
    parts.append(_eval_subgroups(spec, a, table))

    parts.append(f"<h2>Plots ({html.escape(scope)})</h2><div class=plots>")
    parts.extend(make_evaluation_plots(spec, metrics, table).values())
    parts.append("</div>")

    parts.append("<h2>Label map</h2>")
    parts.append(rh.label_map(spec))
    parts.append(f"<p class=disclaimer>{rh.DISCLAIMER}</p></body></html>")
    return "\n".join(parts)


def write_evaluation_report(spec: JobSpec, metrics: dict[str, Any], table: Any, out_dir: str | Path) -> Path:
    """``out_dir/report.html`` of ``skinhpc evaluate`` (``metrics`` from :func:`skinhpc.outputs.evaluate.evaluate`,
    ``table`` its predictions of the readable images, with age/sex/site when the data has them)."""
    out = Path(out_dir) / "report.html"
    write_text_atomic(out, render_evaluation(spec, metrics, table))
    log.info("evaluation report written: %s", out)
    return out
