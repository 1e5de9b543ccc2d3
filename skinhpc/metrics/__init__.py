"""Pure metrics; callers import the public functions from here (``from skinhpc import metrics``)."""

from skinhpc.metrics.evaluation import pr_points, reliability, risk_coverage, roc_points, subgroups
from skinhpc.metrics.malignant import binary_probs, malignant_indices, to_binary, to_binary_labels

__all__ = ["binary_probs", "malignant_indices", "pr_points", "reliability", "risk_coverage", "roc_points",
           "subgroups", "to_binary", "to_binary_labels"]
