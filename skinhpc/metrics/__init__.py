"""Pure metrics, one owner per rule; callers import from here (``from skinhpc import metrics``).

- :mod:`.arrays`: input checks and the decision convention (positive when ``p >= threshold``);
- :mod:`.operating_point`: ROC operating points, threshold choice on validation, temperature;
- :mod:`.evaluation`: :func:`evaluate`, every test metric of one set of predictions;
- :mod:`.curves`: reliability/ECE, risk-coverage, thinned ROC/PR curves for plots;
- :mod:`.bootstrap`: group-bootstrap intervals;
- :mod:`.subgroups`: per-subgroup metrics and image-blind baselines;
- :mod:`.groups`: lesion/patient-level evaluation (one row per group, the per-image threshold);
- :mod:`.malignant`: which probability columns count as malignant, and the binary view;
- :mod:`.pairwise`: malignant vs each benign class, and their case-mix-free mean.
"""

from skinhpc.metrics.arrays import as_labels, as_probs, as_scores, both_classes, predict_labels
from skinhpc.metrics.bootstrap import resample_weights, weighted_ap_rows, weighted_auc_rows
from skinhpc.metrics.curves import pr_points, reliability, risk_coverage, roc_points
from skinhpc.metrics.evaluation import evaluate
from skinhpc.metrics.groups import aggregate, evaluate_groups, images_per_group
from skinhpc.metrics.malignant import binary_probs, malignant_indices, to_binary, to_binary_labels
from skinhpc.metrics.operating_point import (
    METHODS,
    apply,
    apply_temperature,
    choose,
    choose_all,
    fit_temperature,
    nll,
    roc_operating_points,
    sens_at_spec,
    spec_at_sens,
)
from skinhpc.metrics.pairwise import benign_class_aucs
from skinhpc.metrics.subgroups import AGE_BANDS, age_band, baselines, category, subgroups

__all__ = [
    "AGE_BANDS", "METHODS", "age_band", "aggregate", "apply", "apply_temperature", "as_labels", "as_probs",
    "as_scores", "baselines", "benign_class_aucs", "binary_probs", "both_classes", "category", "choose", "choose_all", "evaluate",
    "evaluate_groups", "fit_temperature", "images_per_group", "malignant_indices", "nll", "pr_points",
    "predict_labels", "reliability",
    "resample_weights", "risk_coverage", "roc_operating_points", "roc_points", "sens_at_spec",
    "spec_at_sens", "subgroups", "to_binary", "to_binary_labels", "weighted_ap_rows", "weighted_auc_rows",
]
