"""Per-sample equality of our post-hoc detectors with OpenOOD's, and the same APS choices.

Fixture provenance (tests/fixtures/openood_v15_scores.npz, openood_v15_aps.json): OpenOOD at commit
3c35632ee91b54b09d1f085d04f94744cece7d0b of github.com/Jingkang50/OpenOOD (v1.5, tag 8d44375, plus
later fixes; GEN and SCALE exist only after the tag), run on 2026-12-05 in a scratch folder outside
this repository, CPU, torch 2.14.1, one thread. Steps:

1. ``git archive`` of that commit into a scratch folder; put it and this ``tests/`` folder on sys.path.
2. Import ``openood.postprocessors`` and ``openood.evaluation_api.evaluator``, replacing only the
   modules that cannot be imported here by empty stand-ins (cv2, diffdist, foolbox, imgaug, libmr,
   pandas, statsmodels, timm: used by other OpenOOD methods and by the evaluator's DataFrame
   output, not by the code run); ``Tensor.cuda`` / ``Module.cuda`` made the identity and
   ``torch.ones(device='cuda')`` (TemperatureScaling's init) built on the CPU.
3. Network and data from :mod:`openood_equality_inputs` (weights drawn from a numpy seed); loaders
   are lists of ``{'data', 'label'}`` batches of 50. For each detector: OpenOOD's class with the
   arguments of ``ARGS`` (OpenOOD's defaults and grids, scaled where the 64-d feature and 400
   training images need it), wrapped in ReactNet / ASHNet / ScaleNet for react / ash / scale as
   ``evaluation_api.Evaluator`` does, ``setup(net, {'train','val','test'}, {'val'})``, then for APS
   methods ``evaluation_api.Evaluator.hyperparam_search`` (called on a stand-in ``self`` holding
   the postprocessor, net and the two val loaders), then ``inference`` on the ID and OOD test sets.
4. The tie case: ``hyperparam_search`` over ODIN's grid with a stand-in postprocessor scoring
   ``tied_conf`` (three candidates tie at AUROC 1.0); OpenOOD picked (1000, 0.0014).
5. Saved the confs (float64 copies) and the chosen hyper-parameters; nothing else is committed,
   except ``reference_logits/<split>``: the network's logits on that machine (same torch, same
   weights), which tell a test machine whether its CPU kernels reproduce the reference bits.

Tolerances: MSP, EBO and ODIN must be bit-identical (same float32 bits) wherever this machine's
forward pass reproduces the reference logits bit for bit (otherwise that check is skipped, visibly,
and the float32 tolerance below still applies). The others run in float32
on whole cached tensors where OpenOOD runs per batch, or evaluate the same formula in another order
(Mahalanobis per sample instead of a batch matrix's diagonal, KL for all pairs at once, float64
KL), so they agree to float32 rounding: |ours - theirs| <= 2e-5 * max(1, |theirs|). RMDS is the
difference of two Mahalanobis terms of MDS's size (~1e2 here) that mostly cancel, so its bound is
2e-5 * max(1, |MDS score of the same image|).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import openood_equality_inputs as fx
from moodcat_plugin.config import Config
from moodcat_plugin.evaluation import Evaluator
from moodcat_plugin.postprocessors import BasePostprocessor
from moodcat_plugin.registry import POSTPROCESSORS

FIXTURES = Path(__file__).parent / "fixtures"
SCORES = np.load(FIXTURES / "openood_v15_scores.npz")
APS_CHOICES = json.loads((FIXTURES / "openood_v15_aps.json").read_text())["chosen"]
BIT_IDENTICAL = ("msp", "ebo", "odin")
RELATIVE_TOLERANCE = 2e-5


def method_config(method: str, args: dict, sweep: dict) -> Config:
    return Config({"device": "cpu", "progress": False,
                   "dataset": {"name": "cifar10", "normalization": {"mean": list(fx.MEAN), "std": list(fx.STD)}},
                   "postprocessor": {"name": method, "APS_mode": method in fx.APS, "postprocessor_args": args,
                                     "postprocessor_sweep": sweep}})


SHARED_OUTPUTS = {}  # one forward pass per set for the whole module, as in a run


def fixture_evaluator(loaders) -> Evaluator:
    """Our evaluator over the fixture's loaders (no Benchmark: the sets are already batched)."""
    evaluator = Evaluator.__new__(Evaluator)
    evaluator.device, evaluator.progress = torch.device("cpu"), False
    evaluator._outputs, evaluator._checkpoints = SHARED_OUTPUTS, {}
    evaluator.id_loader_dict = {name: loaders[name] for name in ("train", "val", "test")}
    evaluator.ood_loader_dict = {"val": loaders["ood_val"]}
    return evaluator


def same_kernels(net, loaders) -> bool:
    """True when this machine's forward gives the reference machine's logits bit for bit."""
    with torch.no_grad():
        return all(np.array_equal(torch.cat([net(b["data"]) for b in loaders[split]]).numpy(),
                                  SCORES[f"reference_logits/{split}"]) for split in ("test", "ood_test"))


def test_this_machine_reproduces_the_reference_forward_pass(setting):
    if not same_kernels(*setting):
        pytest.skip("this CPU's kernels give other float32 bits than the fixture's machine: the "
                    "bit-identity checks of MSP/EBO/ODIN are skipped, their float32 tolerance still holds")


@pytest.fixture(scope="module")
def setting():
    torch.set_num_threads(1)  # the fixture was made with one thread
    SHARED_OUTPUTS.clear()
    return fx.seeded_network(), fx.loaders()


@pytest.mark.parametrize("method", sorted(fx.ARGS))
def test_scores_and_aps_choice_equal_openoods(method, setting):
    net, loaders = setting
    args, sweep = fx.ARGS[method]
    postprocessor = POSTPROCESSORS.get(method)(method_config(method, args, sweep))
    evaluator = fixture_evaluator(loaders)
    if method in fx.APS:
        evaluator.hyperparam_search(postprocessor, net)
        assert postprocessor.get_hyperparam() == APS_CHOICES[method]
    else:
        evaluator._prepare(postprocessor)
        postprocessor.setup(net, evaluator.id_loader_dict, evaluator.ood_loader_dict)
    for split in ("test", "ood_test"):
        ours = evaluator.score(postprocessor, net, loaders[split]).conf.astype(np.float64)
        theirs = SCORES[f"{method}/{split}"]
        if method in BIT_IDENTICAL and same_kernels(net, loaders):
            assert np.array_equal(ours, theirs), f"{method} {split}: max diff {np.abs(ours - theirs).max()}"
        else:
            scale = SCORES[f"mds/{split}"] if method == "rmds" else theirs
            bound = RELATIVE_TOLERANCE * np.maximum(1.0, np.abs(scale))
            assert np.all(np.abs(ours - theirs) <= bound), f"{method} {split}: max diff {np.abs(ours - theirs).max()}"


def test_aps_tie_resolved_as_openood(setting):
    """Three ODIN-grid candidates tie at val AUROC 1.0; OpenOOD v1.5 picked (1000, 0.0014)."""
    _, loaders = setting

    class Tied(BasePostprocessor):
        needs = "forward"

        def postprocess(self, net, data):
            return torch.zeros(len(data), dtype=torch.long), fx.tied_conf(data, self.temperature, self.noise)

    sweep = {"temperature": [1, 10, 100, 1000], "noise": [0.0014, 0.0028]}
    postprocessor = Tied(method_config("tied", {"temperature": 1, "noise": 0.0014}, sweep))
    postprocessor.registered_name = "tied"
    trials = fixture_evaluator(loaders).hyperparam_search(postprocessor, torch.nn.Identity())
    assert [t["AUROC"] for t in trials].count(1.0) == 3
    assert postprocessor.get_hyperparam() == APS_CHOICES["tied_odin_grid"] == [1000, 0.0014]
