"""The self-contained HTML report of a reduced job (``results/<job>/ensemble/report.html``).

One file that can be mailed or archived: every image is a base64 data URI, the CSS is inline,
nothing is fetched.  It puts the numbers that are easy to misread next to the ones that correct
them: gated figures beside coverage and the full-set figures, the ensemble beside each member and
beside baselines that ignore the image, the threshold's provenance (validation), the label map
and the exact spec.  It presents the reduce's summary (``metrics.json``) and computes nothing.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import skinhpc.outputs.report.pieces as rh
from skinhpc.config import JobSpec, dump_yaml
from skinhpc.io.atomic import write_text_atomic
from skinhpc.io.layout import JobPaths

log = logging.getLogger(__name__)

# the most confident test errors the report shows, with thumbnails: the report holds no table with
# one row per image, so its size does not grow with the test set (0.2 MB at 300 or 9,600 images)
WORST_ERRORS = 12


def chosen_on_text(summary: dict[str, Any]) -> str:
    """Where temperature, threshold and gate were chosen: the validation split, or (k-fold) the
    out-of-fold predictions, with how much of the non-test data they cover."""
    cal = summary.get("calibration") or {}
    if cal.get("set") != "oof":
        return "the validation split"
    text = (f"the out-of-fold predictions ({cal.get('images')} images of {cal.get('folds')} folds, each "
            f"scored only by the members that held it out)")
    if cal.get("folds_missing"):
        text += f"; fold(s) {cal['folds_missing']} had no finished member: {cal.get('not_covered')} images not covered"
    return text


def _binary_headline(view: dict[str, Any], thr: dict[str, Any], chosen: str = "the validation split") -> str:
    """The malignant question's test headline with the threshold's provenance."""
    t, g = view["test"], view.get("test_by_group")
    rows = rh.binary_rows(t, thr.get("threshold"), thr.get("method"), thr.get("target"),
                          f"<b>chosen on {html.escape(chosen)}</b> (never on test)", g)
    rows.append(["test images / prevalence", f"{t.get('n')} / {rh.fmt(t.get('prevalence'))}"]
                + ([f"{g.get('n')} groups / {rh.fmt(g.get('prevalence'))}"] if g is not None else []))
    return rh.table(rh.group_headers("test metric", g), rows, "headline") + rh.group_note(g)


def _multiclass_headline(summary: dict[str, Any]) -> str:
    """Macro figures and per-class AUCs of the argmax classifier, per image and per group."""
    t, g = summary["test"], summary.get("test_by_group")
    views = [t] + ([g] if g is not None else [])
    rows = [["macro ROC-AUC (one-vs-rest)"] + [rh.fmt(v.get("auc_macro")) + rh.ci(v, "auc_macro") for v in views],
            ["balanced accuracy (argmax)"]
            + [rh.fmt(v.get("balanced_accuracy")) + rh.ci(v, "balanced_accuracy") for v in views],
            ["accuracy"] + [rh.fmt(v.get("accuracy")) + rh.ci(v, "accuracy") for v in views]]
    rows += [[f"ROC-AUC {html.escape(k)}"] + [rh.fmt((v.get("auc_per_class") or {}).get(k)) for v in views]
             for k in (t.get("auc_per_class") or {})]
    return rh.table(rh.group_headers("test metric", g), rows, "headline") + rh.group_note(g)


def _model_rows(summary: dict[str, Any], view: dict[str, Any], binary: bool) -> str:
    """Ensemble, each member and (top-level view) the image-blind baselines in one table."""
    keys = (["auc", "pr_auc", "sensitivity", "specificity", "balanced_accuracy"] if binary
            else ["auc_macro", "accuracy", "balanced_accuracy"])
    rows = [["<b>ensemble</b>", rh.fmt(view["threshold_value"])] + [rh.fmt(view["test"].get(k)) for k in keys]]
    for r in view["members"]:
        rows.append([f"member {html.escape(str(r.get('member')))} (seed {r.get('seed')}"
                     + (f", fold {r.get('fold')}" if r.get("fold") is not None else "")
                     + (f", {html.escape(json.dumps(r.get('overrides')))}" if r.get("overrides") else "") + ")",
                     rh.fmt(r.get("threshold"))] + [rh.fmt(r["test"].get(k)) for k in keys])
    base = summary.get("baselines") or {}
    if view.get("with_baselines"):
        for name in ("majority", "random"):
            b = base.get(name)
            if b:
                rows.append([f"baseline: {name} (ignores the image)", "-"]
                            + [rh.fmt(b.get("auc" if k == "auc" else k)) for k in keys])
    return rh.table(["model", "threshold"] + keys, rows)


def _audit(paths: JobPaths) -> str:
    """The data audit's findings, shortened: the full audit.json is beside the report."""
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
    return rh.table(["finding", "summary"], rows, "audit")


def _worst_errors(summary: dict[str, Any]) -> str:
    """The most confident test errors with thumbnails of the source images; every other image is
    in predictions_test.csv beside the report."""
    rows = summary.get("worst_errors")
    head = f"<h2>Most confident errors (test, at most {WORST_ERRORS})</h2>"
    if rows is None:
        return head + "<p>Not recorded by this reduce.</p>"
    if not rows:
        return head + "<p>No test image is misclassified at the threshold.</p>"
    note = (f"<p>The {len(rows)} test images the ensemble gets wrong with the highest confidence (at the "
            f"validation threshold). Counts per class are in the confusion matrices below; every "
            f"image's prediction is in predictions_test.csv beside this report.</p>")
    body = [[rh.thumbnail(r["path"]) if r.get("path") else "", html.escape(str(r.get("image_id"))),
             html.escape(str(r.get("group", ""))), html.escape(str(r.get("true"))), html.escape(str(r.get("pred"))),
             rh.fmt(r.get("confidence"))] for r in rows]
    return head + note + rh.table(["image", "image id", "group", "true", "predicted", "confidence"], body, "errors")


def render(spec: JobSpec, paths: JobPaths, summary: dict[str, Any]) -> str:
    """The report as one HTML string (images inlined)."""
    binary = spec.data.task == "binary"
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>skinhpc report: "
             f"{html.escape(spec.name)}</title><style>{rh.CSS}</style></head><body>"]
    parts.append(f"<h1>skinhpc report: {html.escape(spec.name)}</h1>")
    parts.append(f"<p class=disclaimer><b>Medical disclaimer.</b> {rh.DISCLAIMER}</p>")
    used, miss = summary.get("members_used", []), summary.get("members_missing", [])
    parts.append(
        f"<p>Task <b>{html.escape(spec.data.task)}</b>; {len(used)} member(s) "
        f"({html.escape(spec.model.name)}), ensemble <b>{html.escape(summary.get('ensemble', ''))}</b> over "
        f"TTA views {html.escape(', '.join(summary.get('views', [])))}; temperature "
        f"{summary.get('temperature', 1.0):.3f}, threshold and gate fitted on "
        f"{html.escape(chosen_on_text(summary))}; {summary.get('n_val')} "
        f"{'out-of-fold' if (summary.get('calibration') or {}).get('set') == 'oof' else 'validation'} and "
        f"{summary.get('n_test')} test images, split grouped by lesion/patient.</p>")
    if miss:
        items = "".join(f"<li>member {html.escape(str(m.get('name')))}: {html.escape(str(m.get('reason')))}</li>"
                        for m in miss)
        parts.append(f"<p class=warn>Members left out:</p><ul class=warn>{items}</ul>")

    parts.append("<h2>Headline (test split)</h2>")
    thr = summary["thresholds"]
    if binary:
        parts.append(_binary_headline(summary, thr, chosen_on_text(summary)))
        views = [("", summary, thr.get("threshold"))]
    else:
        parts.append(_multiclass_headline(summary))
        mal = summary["malignant"]
        parts.append("<h3>Malignant vs benign view (sum of malignant class probabilities)</h3>")
        parts.append(_binary_headline(mal, {**mal["threshold"], "threshold": thr["malignant"]["threshold"]},
                                      chosen_on_text(summary)))
        views = [("", summary, None), ("malignant view: ", mal, thr["malignant"]["threshold"])]

    oof = (summary.get("calibration") or {}).get("set") == "oof"
    parts.append(f"<h2>{'Out-of-fold' if oof else 'Validation'} figures (where the choices were made)</h2>")
    parts.append(f"<p>The images that chose the threshold and temperature: {html.escape(chosen_on_text(summary))}. "
                 "Optimistic for the operating point (it was fitted here); the test table above is the one "
                 "to quote.</p>")
    for label, view, t in views:
        if t is None:
            continue
        v = view["val"]
        parts.append(rh.table([f"{label or ''}{'OOF' if oof else 'validation'} metric", "value"],
                              rh.binary_rows(v, t, None, None, "chosen here")[:4]))

    bc = summary.get("benign_classes") or {}
    parts.append("<h2>Malignant vs each benign class</h2>")
    parts.append(rh.benign_class_table([("out-of-fold" if oof else "validation", bc.get("val") or {}),
                                        ("test", bc.get("test") or {})]))

    parts.append("<h2>Referral gate: coverage beside every gated number</h2>")
    for label, view, _ in views:
        if label:
            parts.append(f"<h3>{html.escape(label)}</h3>")
        parts.append(rh.gate_section(spec, view["test"], binary or bool(label)))

    parts.append("<h2>Members, ensemble and baselines (test)</h2>")
    parts.append("<p>Each member's threshold is chosen on its own validation images (k-fold: its fold) like the "
                 "ensemble's. Baselines "
                 "ignore the image: majority predicts the training prior, random draws probabilities.</p>")
    for label, view, t in views:
        if label:
            parts.append(f"<h3>{html.escape(label)}</h3>")
        vb = binary or bool(label)
        parts.append(_model_rows(summary, {**view, "threshold_value": t, "with_baselines": not label}, vb))

    parts.append("<h2>Subgroups (test)</h2>")
    parts.append(rh.subgroup_table(summary.get("subgroups") or [], binary))

    parts.append(_worst_errors(summary))

    parts.append("<h2>Plots (test)</h2><div class=plots>")
    for name, rel in (summary.get("plots") or {}).items():
        parts.append(rh.inline_png((paths.in_ensemble(rel)).read_bytes(), name))
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
            parts.append(f"<figure>{rh.inline_png((paths.gradcam_image(it['file'])).read_bytes(), it['image_id'])}"
                         f"<figcaption>{cap}</figcaption></figure>")
        parts.append("</div>")

    parts.append("<h2>Data audit</h2>")
    parts.append(_audit(paths))
    parts.append("<h2>Label map</h2>")
    parts.append(rh.label_map(spec))
    spec_text = paths.job_yaml.read_text() if paths.job_yaml.exists() else dump_yaml(spec)
    parts.append("<h2>Spec that produced this report (job.yaml)</h2>")
    parts.append(f"<pre>{html.escape(spec_text)}</pre>")
    parts.append(f"<p class=disclaimer>{rh.DISCLAIMER}</p></body></html>")
    return "\n".join(parts)


def write_report(spec: JobSpec, paths: JobPaths, summary: dict[str, Any]) -> Path:
    """``ensemble/report.html`` of the reduce, written atomically."""
    out = paths.report
    write_text_atomic(out, render(spec, paths, summary))
    log.info("report written: %s", out)
    return out
