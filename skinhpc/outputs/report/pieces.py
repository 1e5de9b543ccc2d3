"""HTML pieces both reports share: number formatting, tables, inline images, the gate and
subgroup tables, the label map, the CSS and the disclaimer.

They present numbers the reduce or ``skinhpc evaluate`` already computed; nothing here computes
a metric.  Every image is a base64 data URI so that a report is one file that can be mailed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from skinhpc.config import JobSpec

DISCLAIMER = (
    "Research use only. This report describes a machine-learning model evaluated on a retrospective "
    "dataset; it is not a medical device, has not been clinically validated, and must not be used to "
    "diagnose, treat or rule out skin cancer. Any suspicious lesion needs a clinician."
)


def fmt(v: Any, pct: bool = False) -> str:
    """A number as the reports print it (3 decimals or a percentage; "n/a" for missing or
    non-finite, never a blank a reader could take for zero); other values escaped."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, (float, np.floating)):
        return f"{v:.1%}" if pct else f"{v:.3f}"
    return html.escape(str(v))


def ci(ev: dict[str, Any], key: str) -> str:
    """The bootstrap interval of ``key`` beside its value, or nothing when there is none."""
    iv = ((ev.get("bootstrap") or {}).get("intervals") or {}).get(key)
    if not iv or iv.get("lo") is None:
        return ""
    return f" <span class=ci>(95 % CI {iv['lo']:.3f}-{iv['hi']:.3f})</span>"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; headers are escaped, cells are HTML already (callers format them)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def inline_png(png: bytes, alt: str) -> str:
    """PNG bytes (a file's, or a figure's from :func:`.figures.png_bytes`) as an ``<img>`` with a data
    URI: the report stays one self-contained file."""
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def thumbnail(path: str, px: int = 128) -> str:
    """The image at ``path`` as an inline JPEG ``<img>`` at most ``px`` on its long side (a few KB),
    or a line saying why it cannot be shown: a report never fails for one unreadable image."""
    from PIL import Image

    from skinhpc.data.images import read_rgb  # deferred: OpenCV (~3 s), only for thumbnails

    try:
        im = Image.fromarray(read_rgb(path))
    except ValueError as e:
        return f"<span class=warn>image not shown: {html.escape(str(e))}</span>"
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return (f"<img class=thumb alt='{html.escape(Path(path).name)}' "
            f"src='data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}'>")


def _binary_values(t: dict[str, Any]) -> list[str]:
    s90, s95 = t.get("sens_at_spec90") or {}, t.get("sens_at_spec95") or {}
    return [
        fmt(t.get("auc")) + ci(t, "auc"),
        fmt(t.get("pr_auc")) + ci(t, "pr_auc"),
        fmt(s90.get("sensitivity")),
        fmt(s95.get("sensitivity")),
        f"{fmt(t.get('sensitivity'))}{ci(t, 'sensitivity')} / {fmt(t.get('specificity'))}{ci(t, 'specificity')}",
        f"{fmt(t.get('precision'))} / {fmt(t.get('npv'))}",
        fmt(t.get("balanced_accuracy")) + ci(t, "balanced_accuracy"),
    ]


def binary_rows(t: dict[str, Any], threshold: Any, method: Any, target: Any, provenance: str,
                by_group: dict[str, Any] | None = None) -> list[list[str]]:
    """The binary headline rows both reports share: ranking, operating point, its provenance.

    With ``by_group`` (a lesion/patient-level evaluation) every row gets a second value column
    beside the per-image one; the threshold row says the groups use the same threshold."""
    labels = ["ROC-AUC", "PR-AUC (average precision)", "sensitivity at 90 % specificity",
              "sensitivity at 95 % specificity", "sensitivity / specificity at threshold",
              "precision / NPV at threshold", "balanced accuracy"]
    columns = [_binary_values(t)] + ([_binary_values(by_group)] if by_group is not None else [])
    rows = [[label, *(c[i] for c in columns)] for i, label in enumerate(labels)]
    thr = (f"{fmt(threshold)}: method <b>{fmt(method)}</b>"
           + (f", target {fmt(target)}" if method in ("sens_at_spec", "spec_at_sens") else "")
           + f", {provenance}")
    rows.insert(4, ["threshold", thr] + (["the same (per image, not refitted on groups)"]
                                         if by_group is not None else []))
    return rows


def group_headers(first: str, by_group: dict[str, Any] | None) -> list[str]:
    """Headline table headers: the metric, per image, and per lesion/patient group when there is one."""
    if by_group is None:
        return [first, "value"]
    n = (by_group.get("images_per_group") or {}).get("groups", by_group.get("n"))
    return [first, "per image", f"per lesion/patient group ({n} groups)"]


def group_note(by_group: dict[str, Any] | None) -> str:
    """How many images per group, how a group is scored, and how many groups disagree on the label."""
    if by_group is None:
        return ""
    ipg = by_group.get("images_per_group") or {}
    kinds = ", ".join(f"{html.escape(k)}: {v}" for k, v in (ipg.get("by_kind") or {}).items())
    return (f"<p class=groups>Per lesion/patient group: {ipg.get('images')} images in {ipg.get('groups')} groups "
            f"({kinds}); {fmt(ipg.get('mean'))} images per group on average, at most {ipg.get('max')}, "
            f"{ipg.get('multi_image_groups')} groups with several images. A group's probability is the mean "
            f"over its images and its label the group's label; groups whose images disagree on the label: "
            f"<b>{by_group.get('label_conflicts')}</b> (counted malignant when any image is, or as their most "
            "frequent class). Same threshold and gate as per image (chosen on validation per image, not refitted); "
            "intervals resample the same groups.</p>")


def gate_section(spec: JobSpec, t: dict[str, Any], binary: bool, gate: float | None = None,
                  scope: str = "test") -> str:
    g = t["gated"]
    gate = spec.reduce.gate if gate is None else gate
    if binary:
        rows = [
            ["sensitivity", fmt(t.get("sensitivity")), fmt(g.get("sensitivity"))],
            ["precision", fmt(t.get("precision")), fmt(g.get("precision"))],
            ["specificity", fmt(t.get("specificity")), fmt(g.get("specificity"))],
            ["accuracy", fmt(t.get("accuracy")), fmt(g.get("accuracy"))],
        ]
        extra = (f"<p>Malignant cases referred by the gate: <b>{g.get('malignant_referred')} of "
                 f"{g.get('malignant_total')}</b> ({fmt(g.get('malignant_referred_fraction'), True)}); "
                 "their outcome is decided by a clinician, not by the model.</p>")
    else:
        rows = [
            ["accuracy", fmt(t.get("accuracy")), fmt(g.get("accuracy"))],
            ["balanced accuracy", fmt(t.get("balanced_accuracy")), fmt(g.get("balanced_accuracy"))],
        ]
        extra = f"<p>Referred by true class: {fmt(json.dumps(g.get('referred_by_class')))}</p>"
    cov = (f"<p class=coverage>Gate {gate:g} (refer below this ensemble confidence): "
           f"<b>coverage {fmt(g.get('coverage'), True)}</b>, {g.get('n_covered')} kept, "
           f"{g.get('n_referred')} referred. Gated numbers hold only for the kept cases.</p>")
    tab = table(["metric", f"all {scope} cases", f"kept cases (coverage {fmt(g.get('coverage'), True)})"], rows)
    return cov + tab + extra


def subgroup_table(rows: list[dict[str, Any]], binary: bool) -> str:
    keys = (["prevalence", "auc", "sensitivity", "specificity"] if binary
            else ["auc_macro", "accuracy", "balanced_accuracy"])
    out = []
    for r in rows:
        out.append([fmt(r.get("attribute")), fmt(r.get("value")), fmt(r.get("n"))]
                   + [fmt(r.get(k)) for k in keys] + ["too small" if r.get("too_small") else ""])
    return table(["attribute", "value", "n"] + keys + ["note"], out)


def _interval_text(iv: dict[str, Any] | None) -> str:
    return "" if not iv or iv.get("lo") is None else f"{iv['lo']:.3f}-{iv['hi']:.3f}"


def benign_class_table(sets: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """Malignant vs each benign diagnosis, one column per set (OOF/val, test, an evaluated set),
    the benign-class-balanced mean last: the rows a case mix cannot inflate."""
    sets = [(label, bc) for label, bc in sets if bc and bc.get("balanced_auc") is not None]
    if not sets:
        return "<p>No malignant-vs-benign-class figures (no malignant image, or no dx column).</p>"
    names = sorted({n for _, bc in sets for n in bc.get("classes", {})})
    rows = []
    for name in names:
        row = [f"malignant vs {html.escape(name)}"]
        for _, bc in sets:
            c = bc["classes"].get(name)
            row.append("n/a" if c is None else f"{fmt(c['auc'])} <span class=ci>{_interval_text(c)}"
                       f" (n {c['n']})</span>")
        rows.append(row)
    rows.append(["<b>benign-class-balanced AUC</b> (mean of the rows above)"]
                + [f"<b>{fmt(bc['balanced_auc'])}</b> <span class=ci>{_interval_text(bc.get('balanced_interval'))}"
                   "</span>" for _, bc in sets])
    note = ("<p>AUC of every malignant image against the images of one benign diagnosis; the last row "
            "weighs each benign class alike, whatever its count. The image-level AUC above mixes these "
            "by the set's own case mix (many easy nevi raise it); compare recipes and data sets on the "
            "last row. Intervals: 95 % group bootstrap.</p>")
    return note + table(["question"] + [label for label, _ in sets], rows)


def label_map(spec: JobSpec) -> str:
    rows = [[str(i), html.escape(c)] for i, c in enumerate(spec.class_names)]
    tab = table(["label index", "class"], rows)
    if spec.data.task == "binary":
        note = (f"<p>Binary task: dx codes counted <b>malignant</b> (label 1): "
                f"{html.escape(', '.join(spec.data.malignant))}. Every other dx is benign (label 0). "
                f"Unknown dx: {html.escape(spec.data.unknown_dx)}.</p>")
    else:
        note = (f"<p>Multiclass task; the malignant view sums the probabilities of "
                f"{html.escape(', '.join(c for c in spec.class_names if c in spec.data.malignant))}.</p>")
    return tab + note


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
.thumb{max-width:128px;max-height:128px}
"""


