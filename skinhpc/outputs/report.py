"""Plots and the self-contained HTML report of a reduced job.

One file that can be mailed or archived: every image is a base64 data URI, the CSS
is inline, nothing is fetched. It puts the numbers that are easy to misread next to
the ones that correct them: gated figures beside coverage and the full-set figures,
the ensemble beside each member and beside baselines that ignore the image, the
threshold's provenance (validation), the label map and the exact spec.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from skinhpc import metrics
from skinhpc import metrics as mx
from skinhpc.config import JobSpec, Member, dump_yaml
from skinhpc.ensemble.decision import malignant_view
from skinhpc.io.atomic import atomic_path, write_text_atomic
from skinhpc.io.layout import JobPaths

if TYPE_CHECKING:
    from skinhpc.ensemble.reduce import Split

log = logging.getLogger(__name__)

DISCLAIMER = (
    "Research use only. This report describes a machine-learning model evaluated on a retrospective "
    "dataset; it is not a medical device, has not been clinically validated, and must not be used to "
    "diagnose, treat or rule out skin cancer. Any suspicious lesion needs a clinician."
)


# --------------------------------------------------------------------------- plots
def _binary_scores(spec: JobSpec, split: Split) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(y, ensemble score, member scores) of the malignant question."""

    if spec.data.task == "binary":
        return split.y, split.ensemble[:, 1], [m[:, 1] for m in split.members]
    p, y = malignant_view(spec, split.ensemble, split.y)
    return y, p[:, 1], [malignant_view(spec, m, split.y)[0][:, 1] for m in split.members]


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def _reliability_fig(rel: dict[str, Any], title: str) -> Any:
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


def make_plots(spec: JobSpec, summary: dict[str, Any], val: Split, test: Split,
               members: Sequence[Member], out_dir: Path) -> dict[str, Path]:
    """ROC, PR, confusion matrices, reliability and risk-coverage PNGs of the test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    y, p, member_scores = _binary_scores(spec, test)
    what = "malignant vs benign" + ("" if spec.data.task == "binary" else " (sum of malignant classes)")

    for kind in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5, 4.5))
        fn = metrics.roc_points if kind == "roc" else metrics.pr_points
        for m, s in zip(members, member_scores, strict=True):
            c = fn(y, s)
            xs, ys = (c["fpr"], c["tpr"]) if kind == "roc" else (c["recall"], c["precision"])
            score = c["auc"] if kind == "roc" else c["ap"]
            ax.plot(xs, ys, lw=1, alpha=0.6, label=f"member {m.name} ({_fmt(score)})")
        c = fn(y, p)
        xs, ys = (c["fpr"], c["tpr"]) if kind == "roc" else (c["recall"], c["precision"])
        score = c["auc"] if kind == "roc" else c["ap"]
        ax.plot(xs, ys, lw=2.5, color="black", label=f"ensemble ({_fmt(score)})")
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
        plots[kind] = _save(fig, out_dir / f"{kind}.png")
        plt.close(fig)

    cm = summary["confusion"]
    labels = cm["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    titles = ["all test cases at the threshold",
              f"kept by the gate {spec.reduce.gate:g}: coverage {cm['coverage']:.1%}"]
    for ax, mat, title in zip(axes, (cm["at_threshold"], cm["gated"]), titles, strict=True):
        _confusion_ax(ax, mat, labels, title)
    plots["confusion"] = _save(fig, out_dir / "confusion.png")
    plt.close(fig)

    rel = summary["reliability"]
    fig = _reliability_fig(
        rel, f"Reliability, test (ECE {_fmt(rel.get('ece'))}, T={summary.get('temperature', 1):.2f})")
    plots["reliability"] = _save(fig, out_dir / "reliability.png")
    plt.close(fig)

    rc = summary["risk_coverage"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.step(rc["coverage"], rc["risk"], where="post", color="black")
    gated = summary["test"]["gated"]
    if spec.reduce.gate > 0 and gated.get("coverage") is not None:
        ax.axvline(gated["coverage"], ls="--", color="tab:red", label=f"gate {spec.reduce.gate:g}")
        ax.legend(fontsize=8)
    ax.set(xlabel="coverage (fraction not referred)", ylabel="error rate among kept",
           xlim=(0, 1), title=f"Risk-coverage, test (AURC {_fmt(rc.get('aurc'))})")
    plots["risk_coverage"] = _save(fig, out_dir / "risk_coverage.png")
    plt.close(fig)
    stale = set(out_dir.glob("*.png")) - set(plots.values())
    for f in stale:
        f.unlink(missing_ok=True)
    return plots


# --------------------------------------------------------------------------- HTML
def _fmt(v: Any, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, (float, np.floating)):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return html.escape(str(v))


def _ci(ev: dict[str, Any], key: str) -> str:
    iv = ((ev.get("bootstrap") or {}).get("intervals") or {}).get(key)
    if not iv or iv.get("lo") is None:
        return ""
    return f" <span class=ci>(95 % CI {iv['lo']:.3f}-{iv['hi']:.3f})</span>"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(path: Path, alt: str, width: int | None = None) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    w = f" width={width}" if width else ""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'{w}>"


def _binary_rows(t: dict[str, Any], threshold: Any, method: Any, target: Any, provenance: str) -> list[list[str]]:
    """The binary headline rows both reports share: ranking, operating point, its provenance."""
    s90, s95 = t.get("sens_at_spec90") or {}, t.get("sens_at_spec95") or {}
    return [
        ["ROC-AUC", _fmt(t.get("auc")) + _ci(t, "auc")],
        ["PR-AUC (average precision)", _fmt(t.get("pr_auc")) + _ci(t, "pr_auc")],
        ["sensitivity at 90 % specificity", _fmt(s90.get("sensitivity"))],
        ["sensitivity at 95 % specificity", _fmt(s95.get("sensitivity"))],
        ["threshold", f"{_fmt(threshold)}: method <b>{_fmt(method)}</b>"
         + (f", target {_fmt(target)}" if method in ("sens_at_spec", "spec_at_sens") else "")
         + f", {provenance}"],
        ["sensitivity / specificity at threshold",
         f"{_fmt(t.get('sensitivity'))}{_ci(t, 'sensitivity')} / {_fmt(t.get('specificity'))}{_ci(t, 'specificity')}"],
        ["precision / NPV at threshold", f"{_fmt(t.get('precision'))} / {_fmt(t.get('npv'))}"],
        ["balanced accuracy", _fmt(t.get("balanced_accuracy")) + _ci(t, "balanced_accuracy")],
    ]


def _binary_headline(view: dict[str, Any], thr: dict[str, Any]) -> str:
    t = view["test"]
    rows = _binary_rows(t, thr.get("threshold"), thr.get("method"), thr.get("target"),
                        "<b>chosen on the validation split</b> (never on test)")
    rows.append(["test images / prevalence", f"{t.get('n')} / {_fmt(t.get('prevalence'))}"])
    return _table(["test metric", "value"], rows, "headline")


def _gate_section(spec: JobSpec, t: dict[str, Any], binary: bool, gate: float | None = None,
                  scope: str = "test") -> str:
    g = t["gated"]
    gate = spec.reduce.gate if gate is None else gate
    if binary:
        rows = [
            ["sensitivity", _fmt(t.get("sensitivity")), _fmt(g.get("sensitivity"))],
            ["precision", _fmt(t.get("precision")), _fmt(g.get("precision"))],
            ["specificity", _fmt(t.get("specificity")), _fmt(g.get("specificity"))],
            ["accuracy", _fmt(t.get("accuracy")), _fmt(g.get("accuracy"))],
        ]
        extra = (f"<p>Malignant cases referred by the gate: <b>{g.get('malignant_referred')} of "
                 f"{g.get('malignant_total')}</b> ({_fmt(g.get('malignant_referred_fraction'), True)}); "
                 "their outcome is decided by a clinician, not by the model.</p>")
    else:
        rows = [
            ["accuracy", _fmt(t.get("accuracy")), _fmt(g.get("accuracy"))],
            ["balanced accuracy", _fmt(t.get("balanced_accuracy")), _fmt(g.get("balanced_accuracy"))],
        ]
        extra = f"<p>Referred by true class: {_fmt(json.dumps(g.get('referred_by_class')))}</p>"
    cov = (f"<p class=coverage>Gate {gate:g} (refer below this ensemble confidence): "
           f"<b>coverage {_fmt(g.get('coverage'), True)}</b>, {g.get('n_covered')} kept, "
           f"{g.get('n_referred')} referred. Gated numbers hold only for the kept cases.</p>")
    table = _table(["metric", f"all {scope} cases", f"kept cases (coverage {_fmt(g.get('coverage'), True)})"], rows)
    return cov + table + extra


def _model_rows(summary: dict[str, Any], view: dict[str, Any], binary: bool) -> str:
    keys = (["auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy"] if binary
            else ["auc_macro", "accuracy", "balanced_accuracy"])
    rows = [["<b>ensemble</b>", _fmt(view["threshold_value"])] + [_fmt(view["test"].get(k)) for k in keys]]
    for r in view["members"]:
        rows.append([f"member {html.escape(str(r.get('member')))} (seed {r.get('seed')}"
                     + (f", {html.escape(json.dumps(r.get('overrides')))}" if r.get("overrides") else "") + ")",
                     _fmt(r.get("threshold"))] + [_fmt(r["test"].get(k)) for k in keys])
    base = summary.get("baselines") or {}
    if view.get("with_baselines"):
        for name in ("majority", "random"):
            b = base.get(name)
            if b:
                rows.append([f"baseline: {name} (ignores the image)", "-"]
                            + [_fmt(b.get("auc" if k == "auc" else k)) for k in keys])
    return _table(["model", "threshold"] + keys, rows)


def _subgroup_table(rows: list[dict[str, Any]], binary: bool) -> str:
    keys = (["prevalence", "auc", "sensitivity", "specificity"] if binary
            else ["auc_macro", "accuracy", "balanced_accuracy"])
    out = []
    for r in rows:
        out.append([_fmt(r.get("attribute")), _fmt(r.get("value")), _fmt(r.get("n"))]
                   + [_fmt(r.get(k)) for k in keys] + ["too small" if r.get("too_small") else ""])
    return _table(["attribute", "value", "n"] + keys + ["note"], out)


def _audit(paths: JobPaths) -> str:
    if not paths.audit.exists():
        return "<p>No audit.json in the job folder.</p>"
    try:
        audit = json.loads(paths.audit.read_text())
    except ValueError as e:
        return f"<p>audit.json unreadable: {html.escape(str(e))}</p>"
    rows = []
    for k, v in (audit.items() if isinstance(audit, dict) else [("audit", audit)]):
        if isinstance(v, (list, tuple)):
            text = f"{len(v)} item(s)" + (f": {json.dumps(v[:5], default=str)[:400]}" if v else "")
        elif isinstance(v, dict):
            text = json.dumps(v, default=str)
            text = text if len(text) <= 600 else text[:600] + " ..."
        else:
            text = str(v)
        rows.append([html.escape(str(k)), html.escape(text)])
    return _table(["finding", "summary"], rows, "audit")


def _label_map(spec: JobSpec) -> str:
    rows = [[str(i), html.escape(c)] for i, c in enumerate(spec.class_names)]
    table = _table(["label index", "class"], rows)
    if spec.data.task == "binary":
        note = (f"<p>Binary task: dx codes counted <b>malignant</b> (label 1): "
                f"{html.escape(', '.join(spec.data.malignant))}. Every other dx is benign (label 0). "
                f"Unknown dx: {html.escape(spec.data.unknown_dx)}.</p>")
    else:
        note = (f"<p>Multiclass task; the malignant view sums the probabilities of "
                f"{html.escape(', '.join(c for c in spec.class_names if c in spec.data.malignant))}.</p>")
    return table + note


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}.ci{color:#666;font-size:.9em}
.disclaimer{background:#fff4e5;border:1px solid #f0b45c;padding:.8em 1em;border-radius:4px}
.coverage{background:#eef6ff;border-left:4px solid #3b82f6;padding:.5em .8em}
.plots img{max-width:48%;margin:.3em;border:1px solid #ddd}
.gallery figure{display:inline-block;margin:.4em;width:300px;vertical-align:top}
.gallery img{width:100%;border:1px solid #ddd}.gallery figcaption{font-size:.8em}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em}
.warn{color:#a40000}
"""


def render(spec: JobSpec, paths: JobPaths, summary: dict[str, Any]) -> str:
    """The report as one HTML string (images inlined)."""
    ens = paths.ensemble
    binary = spec.data.task == "binary"
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>skinhpc report: "
             f"{html.escape(spec.name)}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>skinhpc report: {html.escape(spec.name)}</h1>")
    parts.append(f"<p class=disclaimer><b>Medical disclaimer.</b> {DISCLAIMER}</p>")
    used, miss = summary.get("members_used", []), summary.get("members_missing", [])
    parts.append(
        f"<p>Task <b>{html.escape(spec.data.task)}</b>; {len(used)} member(s) "
        f"({html.escape(spec.model.name)}), ensemble <b>{html.escape(summary.get('ensemble', ''))}</b> over "
        f"TTA views {html.escape(', '.join(summary.get('views', [])))}; temperature "
        f"{summary.get('temperature', 1.0):.3f} fitted on validation; {summary.get('n_val')} validation and "
        f"{summary.get('n_test')} test images, split grouped by lesion/patient.</p>")
    if miss:
        items = "".join(f"<li>member {html.escape(str(m.get('name')))}: {html.escape(str(m.get('reason')))}</li>"
                        for m in miss)
        parts.append(f"<p class=warn>Members left out:</p><ul class=warn>{items}</ul>")

    parts.append("<h2>Headline (test split)</h2>")
    thr = summary["thresholds"]
    if binary:
        parts.append(_binary_headline(summary, thr))
        views = [("", summary, thr.get("threshold"))]
    else:
        t = summary["test"]
        rows = [["macro ROC-AUC (one-vs-rest)", _fmt(t.get("auc_macro")) + _ci(t, "auc_macro")],
                ["balanced accuracy (argmax)", _fmt(t.get("balanced_accuracy")) + _ci(t, "balanced_accuracy")],
                ["accuracy", _fmt(t.get("accuracy")) + _ci(t, "accuracy")]]
        rows += [[f"ROC-AUC {html.escape(k)}", _fmt(v)] for k, v in (t.get("auc_per_class") or {}).items()]
        parts.append(_table(["test metric", "value"], rows, "headline"))
        mal = summary["malignant"]
        parts.append("<h3>Malignant vs benign view (sum of malignant class probabilities)</h3>")
        parts.append(_binary_headline(mal, {**mal["threshold"], "threshold": thr["malignant"]["threshold"]}))
        views = [("", summary, None), ("malignant view: ", mal, thr["malignant"]["threshold"])]

    parts.append("<h2>Referral gate: coverage beside every gated number</h2>")
    for label, view, _ in views:
        if label:
            parts.append(f"<h3>{html.escape(label)}</h3>")
        parts.append(_gate_section(spec, view["test"], binary or bool(label)))

    parts.append("<h2>Members, ensemble and baselines (test)</h2>")
    parts.append("<p>Each member's threshold is chosen on validation like the ensemble's. Baselines "
                 "ignore the image: majority predicts the training prior, random draws probabilities.</p>")
    for label, view, t in views:
        if label:
            parts.append(f"<h3>{html.escape(label)}</h3>")
        vb = binary or bool(label)
        parts.append(_model_rows(summary, {**view, "threshold_value": t, "with_baselines": not label}, vb))

    parts.append("<h2>Subgroups (test)</h2>")
    parts.append(_subgroup_table(summary.get("subgroups") or [], binary))

    parts.append("<h2>Plots (test)</h2><div class=plots>")
    for name, rel in (summary.get("plots") or {}).items():
        parts.append(_img(ens / rel, name))
    parts.append("</div>")

    parts.append("<h2>Grad-CAM</h2>")
    gc = summary.get("gradcam") or {}
    if gc.get("note"):
        parts.append(f"<p>{html.escape(gc['note'])}</p>")
    if gc.get("items"):
        parts.append("<p>Left: input as the model saw it (after preprocessing); right: Grad-CAM of the "
                     "predicted class, member 0. Most confident correct cases and errors per true class.</p>"
                     "<div class=gallery>")
        for it in gc["items"]:
            cap = (f"{html.escape(it['image_id'])}: true {html.escape(it['true'])}, predicted "
                   f"{html.escape(it['pred'])} ({it['confidence']:.2f}), {html.escape(it['kind'])}")
            parts.append(f"<figure>{_img(ens / 'gradcam' / it['file'], it['image_id'])}"
                         f"<figcaption>{cap}</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Data audit</h2>")
    parts.append(_audit(paths))
    parts.append("<h2>Label map</h2>")
    parts.append(_label_map(spec))
    spec_text = paths.job_yaml.read_text() if paths.job_yaml.exists() else dump_yaml(spec)
    parts.append("<h2>Spec that produced this report (job.yaml)</h2>")
    parts.append(f"<pre>{html.escape(spec_text)}</pre>")
    parts.append(f"<p class=disclaimer>{DISCLAIMER}</p></body></html>")
    return "\n".join(parts)


def write_report(spec: JobSpec, paths: JobPaths, summary: dict[str, Any]) -> Path:
    out = paths.ensemble / "report.html"
    write_text_atomic(out, render(spec, paths, summary))
    log.info("report written: %s", out)
    return out


# --------------------------------------------------------------------------- evaluation report
# `skinhpc evaluate`: a trained job scored on another labelled dataset at its validation operating
# point.  Same rules as the reduce report: images inline, coverage beside every gated number,
# the threshold's provenance spelled out, the label map.  The plots are drawn in memory from the
# evaluation's own predictions (no PNG files are left beside the report).
EVAL_PROVENANCE = "chosen on the job's validation split, not refitted"


def _fig_img(fig: Any, alt: str) -> str:
    """A matplotlib figure as an inline PNG <img> (the figure is closed)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def _eval_arrays(spec: JobSpec, metrics: dict[str, Any], table: Any) -> dict[str, Any]:
    """Labels and probabilities of the scored rows, plus the malignant-vs-benign question.

    ``table`` is the evaluation's predictions of readable images (``label``, ``prob_*``);
    multiclass metrics carry the malignant view under ``metrics["malignant"]``.
    """
    names = list(metrics.get("class_names") or spec.class_names)
    y = table["label"].to_numpy().astype(int)
    binary = spec.data.task == "binary"
    if binary:
        probs = table[["prob_benign", "prob_malignant"]].to_numpy(dtype=float)
        return {"names": names, "y": y, "probs": probs, "binary": True, "y_bin": y,
                "p_bin": probs[:, 1], "bin": metrics, "thr": metrics.get("threshold")}
    probs = table[[f"prob_{c}" for c in names]].to_numpy(dtype=float)
    mal_idx = [i for i, c in enumerate(names) if c in spec.data.malignant]
    if "prob_malignant" in table:
        p_bin = table["prob_malignant"].to_numpy(dtype=float)
    else:
        p_bin = probs[:, mal_idx].sum(axis=1).clip(0, 1)
    mal = metrics.get("malignant") or {}
    return {"names": names, "y": y, "probs": probs, "binary": False,
            "y_bin": np.isin(y, mal_idx).astype(int), "p_bin": p_bin, "bin": mal or None,
            "thr": mal.get("threshold")}


def _confusion_ax(ax: Any, mat: Any, labels: Sequence[str], title: str) -> None:
    arr = np.asarray(mat if mat is not None else np.zeros((len(labels), len(labels))), dtype=int)
    ax.imshow(arr, cmap="Blues")
    top = arr.max() if arr.size else 0
    for (i, j), v in np.ndenumerate(arr):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def make_evaluation_plots(spec: JobSpec, metrics: dict[str, Any], table: Any) -> dict[str, str]:
    """ROC, PR, confusion (at the threshold and under the gate), reliability and risk-coverage
    of an evaluation, as inline ``<img>`` tags keyed by name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    a = _eval_arrays(spec, metrics, table)
    y, probs, names, binary = a["y"], a["probs"], a["names"], a["binary"]
    yb, pb, bv, thr = a["y_bin"], a["p_bin"], a["bin"] or {}, a["thr"]
    what = "malignant vs benign" + ("" if binary else " (sum of malignant classes)")
    gate = float((metrics.get("gated") or {}).get("gate") or 0.0)
    imgs: dict[str, str] = {}

    fig, ax = plt.subplots(figsize=(5, 4.5))
    if not binary:
        for k, c in enumerate(names):
            cur = mx.roc_points((y == k).astype(int), probs[:, k])
            if cur["auc"] is not None:
                ax.plot(cur["fpr"], cur["tpr"], lw=0.8, alpha=0.5, label=f"{c} vs rest ({_fmt(cur['auc'])})")
    cur = mx.roc_points(yb, pb)
    if cur["auc"] is not None:
        ax.plot(cur["fpr"], cur["tpr"], lw=2.5, color="black", label=f"ensemble, {what} ({_fmt(cur['auc'])})")
    if bv.get("sensitivity") is not None and bv.get("specificity") is not None:
        ax.plot([1 - bv["specificity"]], [bv["sensitivity"]], "o", color="tab:red",
                label=f"threshold {_fmt(thr)} (validation)")
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="chance")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02),
           title="ROC" + ("" if cur["auc"] is not None else " (one class only: undefined)"))
    ax.legend(fontsize=7, loc="lower right")
    imgs["roc"] = _fig_img(fig, "ROC curve")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    cur = mx.pr_points(yb, pb)
    if cur["ap"] is not None:
        ax.plot(cur["recall"], cur["precision"], lw=2.5, color="black", label=f"ensemble ({_fmt(cur['ap'])})")
    if cur.get("prevalence") is not None:
        ax.axhline(cur["prevalence"], ls=":", color="grey", label=f"prevalence {cur['prevalence']:.2f}")
    if bv.get("sensitivity") is not None and bv.get("precision") is not None:
        ax.plot([bv["sensitivity"]], [bv["precision"]], "o", color="tab:red",
                label=f"threshold {_fmt(thr)} (validation)")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"Precision-recall: {what}")
    ax.legend(fontsize=7, loc="lower left")
    imgs["pr"] = _fig_img(fig, "precision-recall curve")

    def confusion_pair(view: dict[str, Any], labels: Sequence[str], at: str) -> Any:
        g = view.get("gated") or {}
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        _confusion_ax(axes[0], view.get("confusion_matrix"), labels, f"all {view.get('n')} cases {at}")
        _confusion_ax(axes[1], g.get("confusion_matrix"), labels,
                      f"kept by the gate {gate:g}: coverage {_fmt(g.get('coverage'), True)} "
                      f"({g.get('n_referred')} referred)")
        fig.tight_layout()
        return fig

    if binary:
        imgs["confusion"] = _fig_img(confusion_pair(metrics, names, f"at threshold {_fmt(thr)}"),
                                     "confusion matrices")
    else:
        imgs["confusion"] = _fig_img(confusion_pair(metrics, names, "(argmax)"), "confusion matrices")
        if bv:
            imgs["confusion_malignant"] = _fig_img(
                confusion_pair(bv, ["benign", "malignant"], f"at threshold {_fmt(thr)}"),
                "confusion matrices, malignant view")

    rel = mx.reliability(y, probs, 10)
    fig = _reliability_fig(rel, f"Reliability (ECE {_fmt(rel.get('ece'))}, temperature from validation)")
    imgs["reliability"] = _fig_img(fig, "reliability diagram")

    fig, ax = plt.subplots(figsize=(5, 4.5))
    rc = mx.risk_coverage(y, probs, threshold=thr if binary else None)
    ax.step(rc["coverage"], rc["risk"], where="post", color="black",
            label=f"{'decision at the threshold' if binary else 'class (argmax)'} (AURC {_fmt(rc.get('aurc'))})")
    if not binary and bv:
        rcm = mx.risk_coverage(yb, np.stack([1 - pb, pb], axis=1), threshold=thr)
        ax.step(rcm["coverage"], rcm["risk"], where="post", color="tab:blue",
                label=f"malignant view (AURC {_fmt(rcm.get('aurc'))})")
    cov = (metrics.get("gated") or {}).get("coverage")
    if gate > 0 and cov is not None:
        ax.axvline(cov, ls="--", color="tab:red", label=f"gate {gate:g}: coverage {cov:.1%}")
    ax.set(xlabel="coverage (fraction not referred)", ylabel="error rate among kept", xlim=(0, 1),
           title="Risk-coverage")
    ax.legend(fontsize=7)
    imgs["risk_coverage"] = _fig_img(fig, "risk-coverage curve")
    return imgs


def _eval_binary_headline(t: dict[str, Any], spec: JobSpec, scope: str) -> str:
    rows = _binary_rows(t, t.get("threshold"), spec.reduce.threshold, spec.reduce.target,
                        f"<b>{EVAL_PROVENANCE}</b>")
    rows += [
        ["accuracy", _fmt(t.get("accuracy")) + _ci(t, "accuracy")],
        ["Brier score / ECE", f"{_fmt(t.get('brier'))} / {_fmt(t.get('ece'))}"],
        ["images / prevalence", f"{t.get('n')} / {_fmt(t.get('prevalence'))}"],
    ]
    return _table([f"metric ({scope})", "value"], rows, "headline")


def _eval_multiclass_headline(m: dict[str, Any], scope: str) -> str:
    rows = [["macro ROC-AUC (one-vs-rest)", _fmt(m.get("auc_macro")) + _ci(m, "auc_macro")],
            ["macro PR-AUC", _fmt(m.get("pr_auc_macro"))],
            ["balanced accuracy (argmax)", _fmt(m.get("balanced_accuracy")) + _ci(m, "balanced_accuracy")],
            ["accuracy (argmax)", _fmt(m.get("accuracy")) + _ci(m, "accuracy")],
            ["Brier score / ECE", f"{_fmt(m.get('brier'))} / {_fmt(m.get('ece'))}"],
            ["images", _fmt(m.get("n"))]]
    head = _table([f"metric ({scope})", "value"], rows, "headline")
    per = m.get("per_class") or {}
    counts = m.get("class_counts") or {}
    auc, ap = m.get("auc_per_class") or {}, m.get("pr_auc_per_class") or {}
    prow = [[html.escape(c), _fmt(counts.get(c)), _fmt(auc.get(c)), _fmt(ap.get(c)),
             _fmt((per.get(c) or {}).get("precision")), _fmt((per.get(c) or {}).get("recall")),
             _fmt((per.get(c) or {}).get("f1"))] for c in (m.get("class_names") or per)]
    return head + _table(["class", "n", "ROC-AUC (vs rest)", "PR-AUC", "precision", "recall", "F1"], prow)


def _eval_subgroups(spec: JobSpec, a: dict[str, Any], table: Any) -> str:

    cols = ("age", "sex", "site")
    if table is None or any(c not in table for c in cols):
        return "<p>The evaluation data has no sex/age/site columns: no subgroup analysis.</p>"
    sub = table[list(cols)].reset_index(drop=True)
    known = any(v != "unknown" for v in (mx.category(x) for c in ("sex", "site") for x in sub[c].tolist()))
    known = known or any(mx.age_band(x) != "unknown" for x in sub["age"].tolist())
    if not known:
        return "<p>Sex, age and site are unknown for every image of this dataset: no subgroup analysis.</p>"
    note = "<p>Metrics of subgroups under 10 images are withheld (too small); every group is listed.</p>"
    rows = mx.subgroups(a["y"], a["probs"], sub, threshold=a["thr"] if a["binary"] else None,
                        class_names=a["names"])
    out = note + _subgroup_table(rows, a["binary"])
    if not a["binary"] and a["bin"]:
        mrows = mx.subgroups(a["y_bin"], np.stack([1 - a["p_bin"], a["p_bin"]], axis=1), sub,
                             threshold=a["thr"], class_names=["benign", "malignant"])
        out += "<h3>Malignant vs benign view</h3>" + _subgroup_table(mrows, True)
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
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class=disclaimer><b>Medical disclaimer.</b> {DISCLAIMER}</p>"]

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
    parts.append(_table(["what", "value"], what))
    thr_text = (f"decision threshold {_fmt(a['thr'])}" if binary
                else f"malignant-view threshold {_fmt(a['thr'])} (classes are the argmax)")
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

    parts.append("<h2>Referral gate: coverage beside every gated number</h2>")
    for label, view, vb in views:
        if label:
            parts.append(f"<h3>{html.escape(label)}</h3>")
        gate = float((view.get("gated") or {}).get("gate") or 0.0)
        parts.append(_gate_section(spec, view, vb, gate=gate, scope="evaluation"))

    parts.append(f"<h2>Subgroups ({html.escape(scope)})</h2>")
    parts.append(_eval_subgroups(spec, a, table))

    parts.append(f"<h2>Plots ({html.escape(scope)})</h2><div class=plots>")
    parts.extend(make_evaluation_plots(spec, metrics, table).values())
    parts.append("</div>")

    parts.append("<h2>Label map</h2>")
    parts.append(_label_map(spec))
    parts.append(f"<p class=disclaimer>{DISCLAIMER}</p></body></html>")
    return "\n".join(parts)


def write_evaluation_report(spec: JobSpec, metrics: dict[str, Any], table: Any, out_dir: str | Path) -> Path:
    """``out_dir/report.html`` of ``skinhpc evaluate`` (``metrics`` from :func:`skinhpc.predict.evaluate`,
    ``table`` its predictions of the readable images, with age/sex/site when the data has them)."""
    out = Path(out_dir) / "report.html"
    write_text_atomic(out, render_evaluation(spec, metrics, table))
    log.info("evaluation report written: %s", out)
    return out
