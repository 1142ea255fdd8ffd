"""Issue 27: training-free re-synthesis scores, CAM-placed masks and the shuffle diagnostic's controls."""
import json

import numpy as np
import pytest
import torch

from moodcat_plugin.moodcat.diagnostics import SHUFFLE_DROP_MIN, shuffle_drop
from moodcat_plugin.moodcat.masking import heatmap_rectangle_mask
from moodcat_plugin.moodcat.resynthesis import (class_activation_map, ebo_distance, feature_l1, label_effect_of,
                                                logit_l1, read_synthesis, shuffled_synthesis, variant_distance)
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _readout(count, synth_of, seed, classes=10, dim=16, masks=2):
    """A readout whose x entries are random and whose syntheses are ``synth_of(x, noise)``."""
    gen = torch.Generator().manual_seed(seed)
    feature = torch.randn(count, dim, generator=gen)
    logits = torch.randn(count, classes, generator=gen)
    noise = lambda t: torch.randn(count, masks, t.shape[-1], generator=gen)  # noqa: E731
    return {"logits": logits, "feature": feature,
            "synth_logits": synth_of(logits[:, None], noise(logits)), "synth_feature": synth_of(feature[:, None], noise(feature)),
            "alt_logits": synth_of(logits[:, None], noise(logits)), "alt_feature": synth_of(feature[:, None], noise(feature)),
            "label_mse": torch.rand(count, masks, generator=gen), "recon_mse": torch.rand(count, masks, generator=gen)}


def _feature_distance(readout):
    return variant_distance(readout, "feature_l1", "input", 2)


def test_shuffle_diagnostic_positive_control_score_that_compares_x_with_its_own_synthesis():
    """ID syntheses restore their own input, OOD ones do not: the x-x' distance separates the sets,
    and only because each x' is paired with its own x. Shuffling x' must destroy that."""
    id_set = _readout(300, lambda x, e: x + 0.1 * e, seed=1)
    ood_set = _readout(300, lambda x, e: e, seed=2)  # the synthesis has nothing of x
    result = shuffle_drop(_feature_distance, id_set, {"ood": ood_set}, shuffled_synthesis)
    assert result["auroc"] > 95 and result["auroc_shuffled"] < 60
    assert result["drop"] >= SHUFFLE_DROP_MIN and result["reads_synthesis"] == 1.0


def test_shuffle_diagnostic_negative_control_score_of_x_alone():
    """EBO reads only the classifier's logits on x: shuffling x' cannot change it."""
    id_set = _readout(300, lambda x, e: x + 0.1 * e, seed=1)
    ood_set = _readout(300, lambda x, e: e, seed=2)
    ood_set["logits"] = ood_set["logits"] * 0.3  # lower energy magnitude: EBO separates the sets
    result = shuffle_drop(ebo_distance, id_set, {"ood": ood_set}, shuffled_synthesis)
    assert result["auroc"] > 70
    assert result["drop"] == 0.0 and result["reads_synthesis"] == 0.0


def test_shuffle_diagnostic_negative_control_score_of_synthesis_alone():
    """A score that reads x' but not its pairing with x (here the norm of x' features, larger for OOD:
    the Cb-without-label finding of issue 8) keeps its AUROC: the set's syntheses are unchanged."""
    id_set = _readout(300, lambda x, e: 0.5 * e, seed=1)
    ood_set = _readout(300, lambda x, e: 2.0 * e, seed=2)
    norm_of_synthesis = lambda r: r["synth_feature"].norm(dim=-1).mean(1)  # noqa: E731
    result = shuffle_drop(norm_of_synthesis, id_set, {"ood": ood_set}, shuffled_synthesis)
    assert result["auroc"] > 95
    assert abs(result["drop"]) < 1.0 and result["reads_synthesis"] == 0.0


def test_shuffled_synthesis_is_a_derangement_that_keeps_x():
    readout = _readout(50, lambda x, e: e, seed=3)
    shuffled = shuffled_synthesis(readout, seed=0)
    assert torch.equal(shuffled["feature"], readout["feature"])
    moved = (shuffled["synth_feature"] != readout["synth_feature"]).flatten(1).any(1)
    assert bool(moved.all())  # no image keeps its own synthesis
    assert torch.equal(shuffled["synth_feature"].sort(0).values, readout["synth_feature"].sort(0).values)


def test_distances_and_references():
    a, b = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.0, 0.0, 0.5]])
    assert logit_l1(a, b).item() == pytest.approx(3.0)
    assert feature_l1(a, 3 * a).item() == pytest.approx(0.0, abs=1e-6)  # scale-free
    readout = _readout(8, lambda x, e: x + e, seed=4, masks=4)
    one = variant_distance(readout, "logit_l1", "input", 1)
    assert torch.allclose(one, logit_l1(readout["logits"], readout["synth_logits"][:, 0]))
    four = variant_distance(readout, "logit_l1", "input", 4)
    assert torch.allclose(four, logit_l1(readout["logits"][:, None], readout["synth_logits"]).mean(1))
    diff = variant_distance(readout, "feature_l1", "runner_up", 4)
    assert torch.allclose(diff, feature_l1(readout["synth_feature"], readout["alt_feature"]).mean(1))
    rel = variant_distance(readout, "feature_l1", "runner_up_relative", 4)
    assert torch.allclose(rel, variant_distance(readout, "feature_l1", "input", 4) / (diff + 1e-8))
    with pytest.raises(ValueError, match="num_masks"):
        variant_distance(readout, "logit_l1", "input", 5)
    assert label_effect_of(readout) > 0


def test_heatmap_rectangles_sit_on_the_heatmap_peak():
    x = torch.zeros(64, 3, 32, 32)
    heatmap = torch.zeros(64, 4, 4)
    heatmap[:, 0, 3] = 1.0  # top-right cell
    masked = heatmap_rectangle_mask(x - 1, heatmap, area=(0.15, 0.2), generator=torch.Generator().manual_seed(0))
    erased = (masked[:, 0] == 0).float()
    area = erased.mean(dim=(1, 2))
    assert bool(((area >= 0.15 - 1e-6) & (area <= 0.2 + 1e-6)).all())
    top_right = erased[:, :16, 16:].sum(dim=(1, 2)) / erased.sum(dim=(1, 2))
    assert float(top_right.mean()) > 0.7  # the boxes sit where the heatmap is


def test_read_synthesis_shapes_and_cam():
    torch.manual_seed(0)
    net = ResNet18_32x32(6, width=0.125).eval()
    gan = MoodcatGAN(6, ch=8, latent_dim=16, disc_ch=8).eval()
    data = torch.randn(5, 3, 32, 32)
    cam = class_activation_map(net, data, torch.zeros(5, dtype=torch.long))
    assert cam.shape == (5, 4, 4) and bool((cam >= 0).all())
    for masks in ("random", "cam"):
        readout = read_synthesis(gan, net, data, MEAN, STD, masks=masks, num_masks=3, num_alt=2,
                                 generator=torch.Generator().manual_seed(0))
        assert readout["synth_logits"].shape == (5, 3, 6) and readout["alt_feature"].shape == (5, 2, net.feature_size)
        assert readout["label_mse"].shape == (5, 2) and bool(torch.isfinite(readout["recon_mse"]).all())


DATA_PACK = __import__("pathlib").Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _test_set_files(benchmark: str):
    """npz stems of every TEST set (ID test, near, far) of a benchmark file."""
    from moodcat_plugin.config import load_yaml
    from moodcat_plugin.pipeline import default_config_root

    splits = load_yaml(default_config_root() / "benchmarks" / f"{benchmark}.yml")["splits"]
    sets = [splits["id"]["test"], *(splits.get("near") or {}).values(), *(splits.get("far") or {}).values()]
    return splits, [spec["npz"] for spec in sets]


@pytest.mark.parametrize("bench_name", ["cifar10", "cifar100"])
def test_far_validation_set_is_declared_built_in_and_shares_no_image_with_any_test_set(bench_name):
    from moodcat_plugin.data.benchmark import _builtin_set

    splits, test_files = _test_set_files(bench_name)
    assert splits["ood_val_far"] == {"builtin": "digits_and_photos"}
    far_val = _builtin_set("digits_and_photos")
    assert far_val.images.shape == (1000, 32, 32, 3) and far_val.images.dtype == np.uint8
    assert np.array_equal(far_val.images, _builtin_set("digits_and_photos").images)  # fixed, not redrawn
    hashes = {image.tobytes() for image in far_val.images}
    present = [name for name in test_files if (DATA_PACK / f"{name}.npz").is_file()]
    if not present:
        pytest.skip("no data pack here (CI): the content check runs where ../shared/data exists")
    for name in present:
        images = np.load(DATA_PACK / f"{name}.npz")["images"]
        assert not hashes & {image.tobytes() for image in images}, f"far-val shares an image with {name}"


def test_benchmark_loads_the_far_validation_set(make_config, fake_data_pack):
    from moodcat_plugin.data.benchmark import load_benchmark

    cfg = make_config(["msp"], benchmark="cifar10", profile="cpu", data_root=str(fake_data_pack))
    bench = load_benchmark(cfg.dataset, cfg.data_root, progress=False)
    assert len(bench.ood_val_far) == 1000 and bool((bench.ood_val_far.labels == -1).all())


def test_ablation_rows_count_only_standalone_rows_that_read_their_synthesis(script):
    """The table script's row scoring on constructed readouts: a comparison row that reads x' counts,
    its EBO fusion and the baselines never do."""
    ablation = script("resynthesis_ablation")
    id_reads = lambda seed: _readout(200, lambda x, e: x + 0.1 * e, seed=seed, masks=4)  # noqa: E731
    ood_reads = lambda seed: _readout(200, lambda x, e: e, seed=seed, masks=4)  # noqa: E731
    readouts = {"id_val": id_reads(1), "tin_val": ood_reads(2), "far_val": ood_reads(3), "id_test": id_reads(4),
                "cifar100": ood_reads(5), "mnist": ood_reads(6)}
    groups = {"near": ["cifar100"], "far": ["mnist"]}
    row = {"name": "feature_l1_k4", "distance": "feature_l1", "reference": "input", "masks": "random", "num_masks": 4}
    scored = ablation.score_row(row, readouts, groups, unit_s=0.01)
    assert scored["counts"] and scored["shuffle_drop"] >= 5 and scored["near_auroc"] > 95
    assert scored["extra_s_per_1000"] == pytest.approx(40.0)
    fused = ablation.score_row({**row, "name": "fused", "fuse": "ebo"}, readouts, groups, unit_s=0.01)
    msp = ablation.score_row({"name": "msp", "baseline": "msp"}, readouts, groups, unit_s=0.01)
    assert not fused["counts"] and not msp["counts"] and msp["shuffle_drop"] == 0.0
    table = ablation.render([scored, fused, msp], {name: 200 for name in readouts}, 0.01, "cifar10")
    assert "| feature_l1_k4 | yes |" in table and "| fused | no |" in table
    assert set(scored["val_parts"]) == {"tin_val", "far_val"} and "| val TIN / far |" in table
    assert f"| {scored['val_parts']['tin_val']:.1f} / {scored['val_parts']['far_val']:.1f} |" in table
    timing = {"a_random": {"images": 10, "seconds": 12.0, "classifier_seconds": 1.0, "syntheses": 5, "group": "val"}}
    assert ablation.seconds_per_synthesis(timing) == pytest.approx(0.2)


def test_postprocessor_scorers_equal_the_readout_distances():
    """``scorers: [logit_l1]`` / ``[feature_l1]`` of the moodcat method give the table's K=1 rows."""
    from moodcat_plugin.moodcat.images import to_signed_unit
    from moodcat_plugin.moodcat.masking import apply_mask
    from moodcat_plugin.moodcat.scorers import ClassifierOutputDistance

    torch.manual_seed(0)
    net = ResNet18_32x32(6, width=0.125).eval()
    gan = MoodcatGAN(6, ch=8, latent_dim=16, disc_ch=8).eval()
    images = torch.rand(5, 3, 32, 32)  # in [0, 1], as loader images before normalisation
    data = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    readout = read_synthesis(gan, net, data, MEAN, STD, num_masks=1, num_alt=0,
                             generator=torch.Generator().manual_seed(3))
    x = to_signed_unit(data, MEAN, STD)
    synthesis = gan.synthesize_from_masked(apply_mask(x, area=(0.15, 0.33), generator=torch.Generator().manual_seed(3)),
                                           net(data).argmax(1))
    for name in ("logit_l1", "feature_l1"):
        scorer = ClassifierOutputDistance(net, MEAN, STD, name)
        assert torch.allclose(scorer(x, synthesis, None), variant_distance(readout, name, "input", 1), atol=1e-4)


class _FlatClassWorld:
    """A constructed MOODCAT: images are flat grey at a level; the classifier predicts the nearest of
    six class levels; the generator returns the flat image of the predicted class. ID images sit on a
    class level (their synthesis restores them), OOD images between levels (it does not)."""

    levels = torch.tensor([-0.75, -0.45, -0.15, 0.15, 0.45, 0.75])

    def __init__(self, scorer):
        from moodcat_plugin.moodcat.fusion import CascadeFusion

        self.mean, self.std, self.num_masks, self.device = [0.5] * 3, [0.5] * 3, 2, torch.device("cpu")
        self.generator = torch.Generator().manual_seed(0)
        self.scorer_names, self.scorer_modules = ["probe"], {"probe": scorer}
        self.fusion = CascadeFusion()
        self.net = lambda data: -(data.mean(dim=(1, 2, 3))[:, None] - self.levels[None]).abs() * 10
        self.loader = lambda values: [{"data": torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()}]

    def synthesize(self, x, y):
        return x, self.levels[y].view(-1, 1, 1, 1).expand_as(x).clone()


@pytest.mark.parametrize("reads_pairing", [True, False])
def test_method_shuffle_drop_controls(reads_pairing):
    """The method-level diagnostic (moodcat_ablation's column): a scorer comparing x with its own
    synthesis drops >= 5 points when syntheses are shuffled; one reading x alone does not move."""
    from moodcat_plugin.moodcat.diagnostics import method_shuffle_drop

    class Probe(torch.nn.Module):
        def forward(self, x, x_synth, y):
            if reads_pairing:
                return (x - x_synth).abs().mean(dim=(1, 2, 3))  # compares x with its own synthesis
            return -(x.mean(dim=(1, 2, 3)).abs())  # reads x alone: OOD levels here are nearer 0

    world = _FlatClassWorld(Probe())
    id_values = world.levels.repeat(10).tolist()  # on the class levels (both signs, all classes)
    ood_values = (torch.tensor([-0.6, -0.3, 0.0, 0.3, 0.6]).repeat(12) + 0.01).tolist()
    world.fusion.fit({"probe": Probe()(*[torch.tensor(id_values).view(-1, 1, 1, 1).expand(-1, 3, 8, 8)] * 2, None)})
    result = method_shuffle_drop(world, world.net, world.loader(id_values), {"ood": world.loader(ood_values)})
    if reads_pairing:
        assert result["auroc"] > 95 and result["drop"] >= SHUFFLE_DROP_MIN
    else:
        assert result["drop"] == 0.0 and result["reads_synthesis"] == 0.0


def test_moodcat_ablation_scores_shipped_weights(tmp_path, script):
    """``moodcat_ablation.py --pretrained FILE`` puts the file in every variant's method config."""
    import yaml

    from moodcat_plugin.pipeline import default_config_root, method_config

    moodcat_ablation = script("moodcat_ablation")
    args = moodcat_ablation.parse_args(["-b", "cifar10", "--profile", "cpu", "--output-dir", str(tmp_path),
                                        "--pretrained", "weights/moodcat_cifar10.pt"])
    spec = yaml.safe_load((default_config_root() / "ablations" / "moodcat_deployable.yml").read_text())
    variant = next(v for v in spec["variants"] if v["name"] == "paper")
    method, config = moodcat_ablation.variant_config(args, variant, spec)
    assert method_config(config, method)["pretrained"]["file"] == "weights/moodcat_cifar10.pt"

    from types import SimpleNamespace

    shipped = SimpleNamespace(training_info={"moodcat_gan": {"pretrained": "weights/moodcat_cifar10.pt", "cached": True}})
    assert moodcat_ablation.training_seconds(shipped) == 0.0  # no run folder: nothing trained here


def test_ablation_reads_the_configs_generator_and_refuses_to_mix_generators(tmp_path, capsys, script,
                                                                           fake_data_pack):
    """Without --pretrained the read stage trains the config's generator only (here the
    class-consistency one, through the classifier) and no Cb; the readouts folder records its
    generator, so reading another generator into it is refused in one line."""
    ablation = script("resynthesis_ablation")
    out = tmp_path / "out"
    common = ["-b", "cifar10", "--profile", "tiny", "--output-dir", str(out), "--data-root", str(fake_data_pack),
              "--per-set", "4", "--set", "device=cpu"]
    consistency = ["--set", "postprocessors.moodcat.gan.class_consistency_weight=1.0"]
    assert ablation.main([*common, *consistency]) == 0
    assert list((out / "checkpoints").glob("cifar10-moodcat_gan-*/final.ckpt"))
    assert not list((out / "checkpoints").glob("cifar10-moodcat_cb-*"))
    identity = json.loads((out / "resynthesis" / "cifar10" / "readouts" / "identity.json").read_text())
    assert identity["generator"]["run"].startswith("cifar10-moodcat_gan-") and identity["per_set"] == 4
    table = (out / "resynthesis" / "cifar10" / "resynthesis.md").read_text()
    assert identity["generator"]["run"] in table and "| feature_l1_k1 |" in table
    assert "Prediction agreement pred(x') = pred(x), per set: random masks id_val " in table
    shares = json.loads((out / "resynthesis" / "cifar10" / "resynthesis.json").read_text())["agreement"]
    assert set(shares) == {"random", "cam"} and all(0 <= v <= 1 for family in shares.values() for v in family.values())
    capsys.readouterr()
    assert ablation.main([*common, "--stage", "read"]) == 2  # the plain generator: another run folder
    assert len(list((out / "checkpoints").glob("cifar10-moodcat_gan-*"))) == 1  # refused before training it
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "holds readouts of another classifier or generator: generator {'run': 'cifar10-moodcat_gan-" in err
    assert "(now {'pretrained': " not in err and err.endswith("use another --output-dir for this one")


def test_agreement_counts_syntheses_given_the_label_of_their_input():
    from moodcat_plugin.moodcat.resynthesis import agreement_of

    logits = torch.tensor([[3.0, 0.0], [0.0, 3.0]])  # predictions 0, 1
    synth = torch.tensor([[[2.0, 1.0], [0.0, 1.0], [5.0, 0.0]],    # image 0: agrees, disagrees, agrees
                          [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])   # image 1: disagrees twice, agrees once
    assert agreement_of({"logits": logits, "synth_logits": synth}) == pytest.approx(3 / 6)
