"""Evaluator: APS re-runs setup for each candidate and keeps the first best in OpenOOD's order;
the classifier's outputs are shared."""
import json

import numpy as np
import torch
from PIL import Image

from moodcat_plugin.data import Benchmark, ImageArray
from moodcat_plugin.evaluation import Evaluator
from moodcat_plugin.evaluation.evaluator import aps_candidates
from moodcat_plugin.evaluation.leaderboard import write_leaderboard
from moodcat_plugin.evaluation.plots import bin_edges
from moodcat_plugin.pipeline import Runner, method_config
from moodcat_plugin.postprocessors import BasePostprocessor


class DistanceToFittedMean(BasePostprocessor):
    """conf = -||x - mean||^2 where the mean is fitted in setup on the source named by ``fit_source``."""

    needs = "forward"

    def __init__(self, config):
        super().__init__(config)
        self.setup_calls = []

    def setup(self, net, id_loader_dict, ood_loader_dict):
        loader = id_loader_dict["train"] if self.fit_source == "id_train" else ood_loader_dict["val"]
        self.setup_calls.append(self.fit_source)
        self.mean = torch.cat([b["data"] for b in loader]).mean(0, keepdim=True)

    def postprocess(self, net, data):
        conf = -((data - self.mean) ** 2).flatten(1).sum(1)
        return torch.zeros(len(data), dtype=torch.long), conf


def _dark_vs_bright_benchmark():
    """ID images are dark, OOD-val images bright: distance to the right fitted mean separates them."""
    rng = np.random.default_rng(0)

    def images(low, high, n):
        return rng.integers(low, high, (n, 32, 32, 3), dtype=np.uint8)

    labels = np.zeros(20, dtype=np.int64)
    ids = {s: ImageArray(s, images(0, 100, 20), labels) for s in ("train", "val", "test")}
    return Benchmark("toy", 1, [0.5] * 3, [0.5] * 3, ids, ImageArray("ood_val", images(150, 255, 20), labels - 1))


def test_aps_refits_per_candidate_and_picks_best(make_config, tmp_path):
    cfg = make_config(["msp"])
    evaluator = Evaluator(cfg, _dark_vs_bright_benchmark(), tmp_path)
    mcfg = method_config(cfg, "msp")
    mcfg.postprocessor.APS_mode = True
    mcfg.postprocessor.postprocessor_args = {"fit_source": "ood_val"}
    mcfg.postprocessor.postprocessor_sweep = {"fit_source": ["ood_val", "id_train"]}
    pp = DistanceToFittedMean(mcfg)
    pp.registered_name = "distance"
    trials = evaluator.hyperparam_search(pp, torch.nn.Identity())
    assert pp.setup_calls == ["ood_val", "id_train", "id_train"]  # one fit per candidate + final
    by_source = {t["values"]["fit_source"]: t["AUROC"] for t in trials}
    assert by_source["id_train"] == 1.0 and by_source["ood_val"] == 0.0
    assert pp.fit_source == "id_train" and pp.hyperparam_search_done


def test_aps_order_is_openoods_and_first_strict_maximum_wins(make_config, tmp_path):
    """Three ODIN candidates tie; OpenOOD v1.5's evaluation_api tries (T, noise) with T varying
    fastest and keeps the first strict maximum, so (1000, 0.0014) wins over (10, 0.0028) and
    (100, 0.0028), which ``itertools.product`` order would have met first."""
    sweep = {"temperature": [1, 10, 100, 1000], "noise": [0.0014, 0.0028]}
    assert aps_candidates(sweep) == [(1, 0.0014), (10, 0.0014), (100, 0.0014), (1000, 0.0014),
                                     (1, 0.0028), (10, 0.0028), (100, 0.0028), (1000, 0.0028)]
    assert aps_candidates({"a": [1, 2]}) == [(1,), (2,)]
    tied = {(10, 0.0028), (100, 0.0028), (1000, 0.0014)}

    class TiedCandidates(BasePostprocessor):
        needs = "forward"

        def postprocess(self, net, data):  # dark (ID) above bright (OOD) only for the tied three
            darkness = -data.flatten(1).mean(1)
            conf = darkness if (self.temperature, self.noise) in tied else torch.zeros(len(data))
            return torch.zeros(len(data), dtype=torch.long), conf

    cfg = make_config(["msp"])
    mcfg = method_config(cfg, "msp")
    mcfg.postprocessor.APS_mode = True
    mcfg.postprocessor.postprocessor_args = {"temperature": 1, "noise": 0.0014}
    mcfg.postprocessor.postprocessor_sweep = sweep
    pp = TiedCandidates(mcfg)
    pp.registered_name = "tied"
    trials = Evaluator(cfg, _dark_vs_bright_benchmark(), tmp_path).hyperparam_search(pp, torch.nn.Identity())
    assert [t["AUROC"] for t in trials].count(1.0) == 3
    assert (pp.temperature, pp.noise) == (1000, 0.0014)


def test_outputs_computed_once_and_shared(make_config, forward_passes):
    cfg = make_config(["msp", "ebo"])
    runner = Runner(cfg)
    passes = forward_passes
    runner.run_method("msp")
    first = len(passes)
    runner.run_method("ebo")  # EBO APS sweeps 4 temperatures on the same cached logits
    assert first == len(passes) and first >= 3 and len(set(passes)) == len(passes)


def test_scores_saved_and_leaderboard_rebuilt_from_disk(make_config):
    cfg = make_config(["msp", "ebo"])
    runner = Runner(cfg)
    runner.run_method("msp")
    runner.run_method("ebo")
    folder = runner.results_dir / "scores" / "msp"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["groups"] == {"near": ["digits_6to9"], "far": ["flower_patches"]}
    with np.load(folder / "id_test.npz") as scores:
        assert scores["conf"].shape == scores["label"].shape
    markdown = write_leaderboard(runner.results_dir, "demo", "id_positive")
    assert "FPR@95 (ID positive, MOODCAT paper)" in markdown
    assert "AUPR-In/Out: **OpenOOD's definition** (trapezoidal" in markdown
    assert "| msp |" in markdown and "| ebo |" in markdown
    picture = runner.results_dir / "score_distributions.png"
    with Image.open(picture) as image:  # one panel per method, side by side
        assert image.format == "PNG" and image.width > 1.5 * image.height


def test_histogram_edges_clip_extremes_and_survive_constant_scores():
    bulk = np.linspace(0, 1, 1000)
    edges = bin_edges([bulk, np.array([1e6])])
    assert edges[-1] < 2 and edges[0] >= 0 and np.all(np.diff(edges) > 0)
    constant = bin_edges([np.full(5, 3.0), np.full(5, 3.0)])
    assert constant[0] < 3.0 < constant[-1]


def test_aggregate_seeds_gives_mean_and_std_over_runs(tmp_path, capsys, script):
    import json
    aggregate_seeds = script("aggregate_seeds")

    def board(folder, auroc_near, acc):
        folder.mkdir(parents=True)
        row = {"method": "msp", "acc": acc, "datasets": {
            "a": {"group": "near", "AUROC": auroc_near, "FPR@95_ood_positive": 0.5},
            "b": {"group": "far", "AUROC": 0.9, "FPR@95_ood_positive": 0.2}}}
        (folder / "leaderboard.json").write_text(json.dumps({"fpr_convention": "ood_positive", "rows": [row]}))
        return folder

    folders = [board(tmp_path / "s0", 0.8, 0.9), board(tmp_path / "s1", 0.6, 0.9)]
    assert aggregate_seeds.main([str(f) for f in folders]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("| msp"))
    assert line == "| msp | 90.00 ± 0.00 | 70.00 ± 10.00 | 90.00 ± 0.00 | 50.00 ± 0.00 | 20.00 ± 0.00 |"
    # runs that would not average over seeds of one experiment: one line each, no table
    assert aggregate_seeds.main([str(folders[0]), str(folders[0])]) == 2
    assert "give at least two different results folders" in capsys.readouterr().err
    other = board(tmp_path / "c100", 0.7, 0.5)
    board_file = other / "leaderboard.json"
    board_file.write_text(board_file.read_text().replace('{"fpr_convention"', '{"benchmark": "cifar100", "fpr_convention"'))
    assert aggregate_seeds.main([str(folders[0]), str(other)]) == 2
    assert "the leaderboards are of different benchmarks (None, cifar100)" in capsys.readouterr().err
    fewer = board(tmp_path / "s2", 0.7, 0.9)
    (fewer / "leaderboard.json").write_text((fewer / "leaderboard.json").read_text().replace('"a": {', '"c": {'))
    assert aggregate_seeds.main([str(f) for f in folders] + [str(fewer)]) == 2
    assert "method msp was scored on other OOD sets in some runs (a, b vs b, c)" in capsys.readouterr().err
