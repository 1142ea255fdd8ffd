"""CascadeFusion: ECDF calibration on ID-val distances and the min-fusion (hand-made scores)."""
import numpy as np
import pytest
import torch

from moodcat_plugin.moodcat.fusion import CascadeFusion

REFERENCE = {"a": [1.0, 2.0, 3.0, 4.0], "b": [10.0, 20.0, 30.0, 40.0]}


def fitted():
    return CascadeFusion().fit({k: torch.tensor(v) for k, v in REFERENCE.items()})


def test_calibrated_values_match_hand_computation():
    fusion = fitted()
    calibrated = fusion.calibrated({"a": torch.tensor([0.5, 1.0, 2.5, 4.0, 9.0]),
                                    "b": np.array([5.0, 20.0, 20.0001, 40.0, 41.0])})
    # fraction of reference distances >= d
    assert calibrated["a"].tolist() == [1.0, 1.0, 0.5, 0.25, 0.0]
    assert calibrated["b"].tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_a_sample_flagged_by_one_scorer_only_gets_low_conf():
    fusion = fitted()
    conf = fusion.transform({"a": torch.tensor([1.5, 1.0, 2.5]), "b": torch.tensor([15.0, 100.0, 25.0])})
    typical, flagged_by_b, middling = conf.tolist()
    assert flagged_by_b < fusion.tau  # calibrated min 0: a looks perfectly ID, but b rejects: the cascade rejects
    assert flagged_by_b < middling < typical
    assert typical == pytest.approx(0.75, abs=fusion.tau)  # min(0.75, 0.75) + tie-break
    assert middling == pytest.approx(0.5, abs=fusion.tau)


def test_fused_conf_never_increases_with_any_distance():
    fusion = CascadeFusion().fit({"a": torch.randn(50), "b": torch.rand(50) * 5})
    base = {"a": torch.randn(200), "b": torch.rand(200) * 6}
    conf = fusion.transform(base)
    for name in base:
        bumped = dict(base)
        bumped[name] = base[name] + torch.rand(200) * 2 + 1e-3
        assert (fusion.transform(bumped) <= conf).all()
        assert (fusion.transform(bumped) < conf).any()


def test_tie_break_orders_only_within_ties():
    fusion = fitted()
    # both beyond every reference distance: calibrated min 0, the farther one ranks lower
    far, farther = fusion.transform({"a": torch.tensor([5.0, 50.0]), "b": torch.tensor([45.0, 450.0])}).tolist()
    assert 0 <= farther < far < fusion.tau
    # a sample with a higher calibrated min always beats one with a lower min
    conf = fusion.transform({"a": torch.tensor([3.9, 3.1]), "b": torch.tensor([39.0, 31.0])})
    assert conf[1] > conf[0]
    assert fusion.tau == pytest.approx(0.5 / 4)


def test_single_scorer_fusion_preserves_its_ranking():
    distances = torch.randn(100)
    fusion = CascadeFusion().fit({"cb": torch.randn(30)})
    conf = fusion.transform({"cb": distances})
    order_conf = torch.argsort(conf, descending=True)
    assert torch.equal(order_conf, torch.argsort(distances))


def test_errors_for_unfitted_missing_or_non_finite():
    with pytest.raises(RuntimeError, match="not fitted"):
        CascadeFusion().transform({"a": torch.zeros(2)})
    with pytest.raises(KeyError, match="b"):
        fitted().transform({"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="not finite"):
        CascadeFusion().fit({"a": torch.tensor([1.0, float("nan")])})


def test_state_dict_round_trip():
    fusion = fitted()
    clone = CascadeFusion()
    clone.load_state_dict(fusion.state_dict())
    probe = {"a": torch.tensor([0.0, 2.2, 7.0]), "b": torch.tensor([12.0, 33.0, 1.0])}
    assert torch.equal(clone.transform(probe), fusion.transform(probe))
