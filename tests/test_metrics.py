"""Golden values for the OOD metrics under both FPR@95 conventions, and agreement with scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from moodcat_plugin.evaluation.metrics import accuracy, fpr_at_recall, ood_metrics


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
    assert m["AUPR_IN"] == pytest.approx(average_precision_score(is_id, scores))
    assert m["AUPR_OUT"] == pytest.approx(average_precision_score(1 - is_id, -scores))
    # FPR@95 (ID positive) by brute force over thresholds
    threshold = np.sort(conf_id)[::-1][int(np.ceil(0.95 * 500)) - 1]
    assert m["FPR@95_id_positive"] == pytest.approx(np.mean(conf_ood >= threshold))
    threshold_ood = np.sort(conf_ood)[int(np.ceil(0.95 * 300)) - 1]
    assert m["FPR@95_ood_positive"] == pytest.approx(np.mean(conf_id <= threshold_ood))


def test_fpr_at_recall_and_accuracy_basics():
    assert fpr_at_recall(np.array([1.0, 2.0]), np.array([0.0, 3.0])) == 0.5
    assert accuracy(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)


def test_nan_scores_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        ood_metrics(np.array([np.nan, 1.0]), np.array([0.0]))
