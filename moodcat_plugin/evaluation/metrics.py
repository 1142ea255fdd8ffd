"""OOD metrics: FPR@95 (both conventions), AUROC, AUPR-In, AUPR-Out, ID accuracy.

Conventions for FPR@95 (same name, different numbers; OpenOOD issue #308):

- ``ood_positive`` (OpenOOD): OOD is the positive class; the share of ID samples flagged OOD at
  the first threshold that catches 95% of OOD samples.
- ``id_positive`` (MOODCAT paper, ODIN paper): ID is the positive class; the share of OOD samples
  accepted at the first threshold that accepts 95% of ID samples.

AUROC is the same under both (area under the ROC curve, ties count one half).

AUPR uses OpenOOD's definition (``openood/evaluators/metrics.py``, also pytorch-ood's): the
TRAPEZOIDAL area under scikit-learn's precision-recall curve, ``auc(recall, precision)``, whose
first point is (recall 0, precision 1). AUPR-In takes ID as positive with score ``conf``; AUPR-Out
takes OOD as positive with score ``-conf``. This is NOT scikit-learn's average precision (a step
sum, ``sum (R_n - R_{n-1}) P_n``): with tied scores the trapezoid interpolates linearly across the
tie and the two differ by several points (e.g. MSP saturating at 1.0). All values are fractions in
[0, 1]; tables show percent.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

FPR_CONVENTIONS = {
    "ood_positive": "FPR@95 (OOD positive, OpenOOD)",
    "id_positive": "FPR@95 (ID positive, MOODCAT paper)",
}
RECALL = 0.95


def fpr_at_recall(positive_scores: np.ndarray, negative_scores: np.ndarray, recall: float = RECALL) -> float:
    """Share of negatives scoring at or above the first threshold that reaches ``recall`` of positives."""
    labels = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([positive_scores, negative_scores]))
    return float(fpr[np.argmax(tpr >= recall)])


def aupr(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """OpenOOD's AUPR: trapezoidal area under the precision-recall curve, positives scoring high."""
    labels = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    precision, recall, _ = precision_recall_curve(labels, np.concatenate([positive_scores, negative_scores]))
    return float(auc(recall, precision))


def ood_metrics(conf_id: np.ndarray, conf_ood: np.ndarray) -> Dict[str, float]:
    """Metrics of one ID-vs-OOD comparison; conf higher = more in-distribution."""
    conf_id, conf_ood = np.asarray(conf_id, dtype=np.float64), np.asarray(conf_ood, dtype=np.float64)
    if not (np.isfinite(conf_id).all() and np.isfinite(conf_ood).all()):
        raise ValueError("conf contains NaN or infinite values; the method produced invalid scores")
    is_id = np.concatenate([np.ones(len(conf_id)), np.zeros(len(conf_ood))])
    scores = np.concatenate([conf_id, conf_ood])
    return {
        "FPR@95_ood_positive": fpr_at_recall(-conf_ood, -conf_id),
        "FPR@95_id_positive": fpr_at_recall(conf_id, conf_ood),
        "AUROC": float(roc_auc_score(is_id, scores)),
        "AUPR_IN": aupr(conf_id, conf_ood),
        "AUPR_OUT": aupr(-conf_ood, -conf_id),
    }


def accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(label)))
