"""Golden values for the OOD metrics under both FPR@95 conventions, OpenOOD's AUPR, and agreement
with scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from moodcat_plugin.evaluation.metrics import accuracy, aupr, fpr_at_recall, ood_metrics


def pr_points(positive, negative):
    """(recall, precision) at every distinct threshold t (predict positive when score >= t), highest t
    first, preceded by OpenOOD's/scikit-learn's starting point (recall 0, precision 1)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    thresholds = np.unique(np.concatenate([positive, negative]))[::-1]
    tp = np.array([(positive >= t).sum() for t in thresholds], float)
    fp = np.array([(negative >= t).sum() for t in thresholds], float)
    return np.r_[0.0, tp / len(positive)], np.r_[1.0, tp / (tp + fp)]


def trapezoid_aupr(positive, negative):
    """The documented OpenOOD definition re-derived: trapezoids between consecutive PR points."""
    recall, precision = pr_points(positive, negative)
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))


def step_average_precision(positive, negative):
    """scikit-learn's average precision re-derived: sum over thresholds of (R_n - R_{n-1}) * P_n."""
    recall, precision = pr_points(positive, negative)
    return float(np.sum(np.diff(recall) * precision[1:]))


def msp_like(n, saturated, rng):
    """MSP-like confs: a share ``saturated`` exactly 1.0, the rest in [0.2, 1] on a 0.01 grid (ties)."""
    conf = np.round(rng.uniform(0.2, 1.0, n), 2)
    conf[: int(saturated * n)] = 1.0
    return conf


def test_fpr_conventions_hand_computed():
    # 20 ID confs 1..20 and 20 OOD confs 0.5..19.5 shifted: hand-checkable thresholds.
    conf_id = np.arange(1, 21, dtype=float)          # 1, 2, ..., 20
    conf_ood = np.arange(1, 21, dtype=float) - 10.5   # -9.5, ..., 9.5
    m = ood_metrics(conf_id, conf_ood)
    # ID positive: accept 95% of ID (19 of 20) -> threshold conf >= 2; OOD with conf >= 2 are
    # 2.5 ... 9.5 -> 8 of 20 accepted -> 0.40.
    assert m["FPR@95_id_positive"] == pytest.approx(0.40)
    # OOD positive: catch 95% of OOD (19 of 20) -> flag conf <= 8.5; ID with conf <= 8.5 are
    # 1 ... 8 -> 8 of 20 flagged -> 0.40 as well by symmetry of this construction.
    assert m["FPR@95_ood_positive"] == pytest.approx(0.40)


def test_fpr_conventions_differ_on_asymmetric_case():
    conf_id = np.array([10.0] * 19 + [0.0])    # one ID outlier at the bottom
    conf_ood = np.array([5.0] * 10 + [-5.0] * 10)
    m = ood_metrics(conf_id, conf_ood)
    # ID positive: 95% of ID accepted at threshold 10 -> no OOD accepted.
    assert m["FPR@95_id_positive"] == pytest.approx(0.0)
    # OOD positive: catching 95% of OOD needs flagging conf <= 5 -> the one ID at 0 is flagged (1/20).
    assert m["FPR@95_ood_positive"] == pytest.approx(0.05)


def test_perfect_and_inverted_separation():
    good = ood_metrics(np.array([2.0, 3.0, 4.0]), np.array([-1.0, 0.0, 1.0]))
    assert good["AUROC"] == 1.0 and good["FPR@95_id_positive"] == 0.0 and good["FPR@95_ood_positive"] == 0.0
    assert good["AUPR_IN"] == 1.0 and good["AUPR_OUT"] == 1.0
    bad = ood_metrics(np.array([-1.0, 0.0, 1.0]), np.array([2.0, 3.0, 4.0]))
    assert bad["AUROC"] == 0.0 and bad["FPR@95_id_positive"] == 1.0 and bad["FPR@95_ood_positive"] == 1.0


def test_agreement_with_sklearn_on_random_scores():
    rng = np.random.default_rng(3)
    conf_id, conf_ood = rng.normal(1, 1, 500), rng.normal(0, 1, 300)
    m = ood_metrics(conf_id, conf_ood)
    is_id = np.r_[np.ones(500), np.zeros(300)]
    scores = np.r_[conf_id, conf_ood]
    assert m["AUROC"] == pytest.approx(roc_auc_score(is_id, scores))
    assert m["AUPR_IN"] == pytest.approx(trapezoid_aupr(conf_id, conf_ood))
    assert m["AUPR_OUT"] == pytest.approx(trapezoid_aupr(-conf_ood, -conf_id))
    # FPR@95 (ID positive) by brute force over thresholds
    threshold = np.sort(conf_id)[::-1][int(np.ceil(0.95 * 500)) - 1]
    assert m["FPR@95_id_positive"] == pytest.approx(np.mean(conf_ood >= threshold))
    threshold_ood = np.sort(conf_ood)[int(np.ceil(0.95 * 300)) - 1]
    assert m["FPR@95_ood_positive"] == pytest.approx(np.mean(conf_id <= threshold_ood))


def test_aupr_hand_computed_tiny_example():
    # ID confs [1, 1], OOD confs [1, 0]: one tie across the classes at conf 1.
    m = ood_metrics(np.array([1.0, 1.0]), np.array([1.0, 0.0]))
    # AUPR-In (ID positive, score conf): PR points (R, P) = (0, 1), (1, 2/3) [t = 1], (1, 1/2) [t = 0].
    # Trapezoid: (1 + 2/3) / 2 = 5/6. Average precision would be 1 * 2/3.
    assert m["AUPR_IN"] == pytest.approx(5 / 6)
    # AUPR-Out (OOD positive, score -conf): (0, 1), (1/2, 1) [t = 0], (1, 1/2) [t = -1].
    # Trapezoid: 1/2 * 1 + 1/2 * (1 + 1/2) / 2 = 7/8. Average precision would be 3/4.
    assert m["AUPR_OUT"] == pytest.approx(7 / 8)
    assert average_precision_score([1, 1, 0, 0], [1, 1, 1, 0]) == pytest.approx(2 / 3)  # what we no longer report
    # AUROC: ID-vs-OOD pairs (1 vs 1) x2 count 1/2, (1 vs 0) x2 count 1 -> 3/4.
    assert m["AUROC"] == pytest.approx(0.75)
    # FPR@95 OOD positive: catching both OOD needs flagging conf <= 1 -> both ID flagged.
    assert m["FPR@95_ood_positive"] == pytest.approx(1.0)
    # FPR@95 ID positive: accepting both ID needs conf >= 1 -> one of two OOD accepted.
    assert m["FPR@95_id_positive"] == pytest.approx(0.5)


def test_aupr_matches_openood_definition_on_tie_heavy_scores():
    """Golden: MSP-like confs with most ID and half the OOD saturated at 1.0. OpenOOD's
    compute_all_metrics (trapezoid) and average precision differ here by more than 10 points."""
    rng = np.random.default_rng(0)
    conf_id, conf_ood = msp_like(600, 0.8, rng), msp_like(400, 0.5, rng)
    m = ood_metrics(conf_id, conf_ood)
    expected_in, expected_out = trapezoid_aupr(conf_id, conf_ood), trapezoid_aupr(-conf_ood, -conf_id)
    assert m["AUPR_IN"] == pytest.approx(expected_in, abs=1e-12)
    assert m["AUPR_OUT"] == pytest.approx(expected_out, abs=1e-12)
    # the scenario really separates the two definitions (the bug this test guards against)
    is_id, scores = np.r_[np.ones(600), np.zeros(400)], np.r_[conf_id, conf_ood]
    ap_in = average_precision_score(is_id, scores)
    assert ap_in == pytest.approx(step_average_precision(conf_id, conf_ood))
    assert expected_in - ap_in > 0.10
    assert expected_out - average_precision_score(1 - is_id, -scores) > 0.03
    assert aupr(conf_id, conf_ood) == m["AUPR_IN"]


def test_fpr_at_recall_and_accuracy_basics():
    assert fpr_at_recall(np.array([1.0, 2.0]), np.array([0.0, 3.0])) == 0.5
    assert accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(np.array([np.nan, 1.0]), np.array([0.0]))
