"""MOODCAT generator (Algorithm 1) and Cb (Eq. 2) training on tiny CPU problems."""
import copy
import csv

import numpy as np
import pytest
import torch

from moodcat_plugin.config import Config
from moodcat_plugin.data import make_loader
from moodcat_plugin.data.demo import build_demo_sets
from moodcat_plugin.moodcat.images import class_name, from_signed_unit, save_labelled_grid, to_signed_unit
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.registry import NETWORKS, TRAINERS
from moodcat_plugin.trainers.moodcat_cb_trainer import MoodcatCbTrainer, hinge_loss, mismatched_labels
from moodcat_plugin.trainers.moodcat_gan_trainer import MoodcatGANTrainer, kl_to_standard_normal, ssim_signed
from moodcat_plugin.training import fit

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)  # deliberately not (0.5, 0.5): conversions must use them


def _config(trainer: dict) -> Config:
    return Config({"device": "cpu", "dataset": {"normalization": {"mean": list(MEAN), "std": list(STD)}},
                   "trainer": trainer})


def _gan_section(**overrides) -> dict:
    section = {"name": "moodcat_gan", "num_epochs": 2, "steps_per_epoch": 2, "batch_size": 8, "lr_g": 5e-5,
               "lr_d": 2e-4, "betas": [0.0, 0.999], "kl_weight": 2.0, "ssim_weight": 5.0, "mse_weight": 3.0,
               "l1_weight": 2.0, "cutmix": True, "cutmix_warmup_epochs": 1, "ema_decay": None,
               "sample_every": 2, "log_every": 1}
    section.update(overrides)
    return section


def _tiny_gan(num_classes: int = 6) -> MoodcatGAN:
    return MoodcatGAN(num_classes, ch=8, latent_dim=16, disc_ch=8)


@pytest.fixture(scope="module")
def demo_sets():
    return build_demo_sets(0)


def _loader(array, batch_size, train=True):
    return make_loader(array, MEAN, STD, batch_size, train=train)


def _flat_params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


# -- images -----------------------------------------------------------------------------------

def test_signed_unit_round_trip_and_range():
    unit = torch.rand(4, 3, 32, 32)
    normalised = (unit - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    signed = to_signed_unit(normalised, MEAN, STD)
    assert torch.allclose(signed, unit * 2 - 1, atol=1e-5)
    assert torch.allclose(from_signed_unit(signed, MEAN, STD), normalised, atol=1e-5)


def test_labelled_grid_is_large_enough_to_read(tmp_path):
    rows = {name: torch.rand(5, 3, 32, 32) * 2 - 1 for name in ("input", "masked", "synthesis")}
    titles = [class_name(k, ["plane", "car"]) for k in (0, 1, 7, 0)]
    assert titles[2] == "class 7"
    path = save_labelled_grid(tmp_path / "sub" / "grid.png", rows, titles, "a title")
    from PIL import Image
    width, height = Image.open(path).size
    assert width >= 4 * 90 and height >= 3 * 90  # about 95 px per 32 px image, not 34


# -- generator network ------------------------------------------------------------------------

def test_registered_names():
    assert NETWORKS.get("moodcat_gan") is MoodcatGAN
    assert TRAINERS.get("moodcat_gan") is MoodcatGANTrainer
    assert TRAINERS.get("moodcat_cb") is MoodcatCbTrainer


def test_synthesize_is_deterministic_masks_and_restores_modes():
    gan = _tiny_gan()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.arange(4)
    masked1, synth1 = gan.synthesize(x, y, generator=torch.Generator().manual_seed(3))
    masked2, synth2 = gan.synthesize(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(masked1, masked2) and torch.equal(synth1, synth2)  # eval: z = mu, fixed masks
    assert synth1.shape == x.shape and synth1.abs().max() <= 1 and not synth1.requires_grad
    erased = (masked1 == 0).all(dim=1).float().mean(dim=(1, 2))
    assert ((erased >= 0.15) & (erased <= 0.34)).all()  # TEST_AREA masks
    assert gan.encoder.training and gan.decoder.training  # modes restored
    _, synth_other = gan.synthesize(x, (y + 1) % 6, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(synth1, synth_other)  # conditional on the label


# -- generator training -----------------------------------------------------------------------

def test_loss_helpers():
    mu, logvar = torch.zeros(3, 5), torch.zeros(3, 5)
    assert kl_to_standard_normal(mu, logvar) == 0
    assert torch.isclose(kl_to_standard_normal(torch.ones(3, 5), logvar), torch.tensor(1.0))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.isclose(ssim_signed(x, x), torch.tensor(1.0), atol=1e-4)
    assert ssim_signed(x, -x) < 0.5


def test_fit_writes_logs_samples_and_resumes(demo_sets, tmp_path):
    loader = _loader(demo_sets["digits_train"], 8)
    run_dir = tmp_path / "gan"
    config = _config(_gan_section(ema_decay=0.5))

    first = MoodcatGANTrainer(_tiny_gan(), loader, config)
    initial_ema = _flat_params(first.net.decoder_ema)
    result = fit(first, run_dir, progress=False, stop_after_epochs=1)
    assert result.get("interrupted") and first.step == 2
    assert (run_dir / "last.ckpt").is_file()

    torch.manual_seed(123)
    second = MoodcatGANTrainer(_tiny_gan(), loader, config)
    result = fit(second, run_dir, progress=False)
    assert result["resumed_from"] == 1 and second.step == 4
    assert (run_dir / "final.ckpt").is_file()

    with open(run_dir / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    for row in rows:
        for key in ("d_loss", "g_loss", "g_adv", "kl", "ssim", "mse", "l1", "recon"):
            assert np.isfinite(float(row[key])), (key, row)
    assert {int(r["epoch"]) for r in rows} == {1, 2}
    assert (run_dir / "samples" / "step_000002.png").is_file()
    assert (run_dir / "samples" / "step_000004.png").is_file()
    history = result["history"]
    assert [h["epoch_idx"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)

    ema = _flat_params(second.net.decoder_ema)
    assert not torch.allclose(ema, initial_ema)  # EMA moved
    assert not torch.allclose(ema, _flat_params(second.net.decoder))  # ... but is an average, not a copy


def test_without_ema_decoder_ema_tracks_decoder(demo_sets):
    loader = _loader(demo_sets["digits_train"], 8)
    trainer = MoodcatGANTrainer(_tiny_gan(), loader, _config(_gan_section(cutmix=False)))
    x, y = trainer.next_batch()
    trainer.train_step(x, y, epoch_idx=1)
    assert torch.equal(_flat_params(trainer.net.decoder_ema), _flat_params(trainer.net.decoder))
    assert trainer.cutmix_probability(1) == 0.0


def test_cutmix_probability_warms_up(demo_sets):
    trainer = MoodcatGANTrainer(_tiny_gan(), [None], _config(_gan_section(cutmix_warmup_epochs=4)))
    assert [trainer.cutmix_probability(e) for e in (1, 2, 4, 9)] == [0.125, 0.25, 0.5, 0.5]


def test_cutmix_consistency_target_is_detached_or_joint():
    """``detached``: the consistency term moves D(mix) only; ``joint`` (the U-Net GAN code): its
    gradient also reaches D(real) and D(fake)."""
    mask = torch.zeros(2, 1, 4, 4)
    mask[:, :, :2] = 1.0
    for mode, reaches_real in (("detached", False), ("joint", True)):
        trainer = MoodcatGANTrainer(_tiny_gan(), [None], _config(_gan_section(cutmix_consistency=mode)))
        real_p, fake_p = torch.randn(2, 1, 4, 4, requires_grad=True), torch.randn(2, 1, 4, 4, requires_grad=True)
        target = trainer.consistency_target(mask, real_p, fake_p)
        assert torch.equal(target.detach(), mask * real_p.detach() + (1 - mask) * fake_p.detach())
        assert target.requires_grad == reaches_real


def test_reconstruction_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    # Smooth blob images (learnable in a few steps), fixed batch, 30 steps, faster generator lr.
    base = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4, generator=gen), size=32, mode="bilinear")
    x, y = base * 2 - 1, torch.arange(8) % 6
    trainer = MoodcatGANTrainer(_tiny_gan(), [None], _config(_gan_section(lr_g=2e-3, cutmix=False)))
    recon = [trainer.train_step(x, y, epoch_idx=1)["recon"] for _ in range(30)]
    assert all(np.isfinite(recon))
    assert np.mean(recon[-5:]) < 0.6 * np.mean(recon[:5]), recon  # ~0.27 observed


# -- Cb training ------------------------------------------------------------------------------

def _cb_config(**overrides) -> Config:
    section = {"name": "moodcat_cb", "num_epochs": 1, "steps_per_epoch": 45, "batch_size": 32, "lr": 5e-4,
               "betas": [0.5, 0.999], "mask_style": "random_rectangle", "train_area": [0.15, 0.33]}
    section.update(overrides)
    return _config(section)


def test_mismatched_labels_never_equal_and_cover_other_classes():
    labels = torch.tensor([0, 3, 5, -1] * 500)
    wrong = mismatched_labels(labels, 6)
    known = labels >= 0
    assert (wrong[known] != labels[known]).all()
    assert set(wrong[labels == 3].tolist()) == {0, 1, 2, 4, 5}
    assert set(wrong[~known].tolist()) == set(range(6))


def test_hinge_loss_sign_convention():
    low, high = torch.full((4,), -2.0), torch.full((4,), 2.0)
    assert hinge_loss(pos_logits=low, neg_logits=high) == 0  # matched low, mismatched high: no loss
    assert hinge_loss(pos_logits=high, neg_logits=low) == 6


def test_cb_separates_matched_from_mismatched_pairs(demo_sets):
    """Cb on demo digits 0 vs 1 with a frozen untrained generator: 45 Adam steps give a binary
    accuracy well above chance on HELD-OUT test pairs (positives and negatives balanced)."""
    def two_classes(array):
        return array.subset(np.flatnonzero(array.labels < 2))

    torch.manual_seed(0)
    gan = _tiny_gan(num_classes=2)
    gan_before = _flat_params(gan)
    cb = ConditionalBinaryClassifier(2, ch=16)
    trainer = MoodcatCbTrainer(cb, _loader(two_classes(demo_sets["digits_train"]), 32), _cb_config(), gan,
                               val_loader=_loader(two_classes(demo_sets["digits_test"]), 128, train=False))
    _, metrics = trainer.train_epoch(1)
    assert np.isfinite(metrics["loss"]) and metrics["epoch_idx"] == 1
    assert metrics["val_acc"] > 0.75, metrics
    assert torch.equal(_flat_params(gan), gan_before)  # generator frozen


def test_pseudo_labelled_negatives_never_use_the_pseudo_label(demo_sets):
    torch.manual_seed(0)
    unlabeled = demo_sets["china_patches"]
    pseudo = np.arange(len(unlabeled)) % 6
    unlabeled = type(unlabeled)(unlabeled.name, unlabeled.images, pseudo)
    unlabeled_loader = _loader(unlabeled, 16)
    trainer = MoodcatCbTrainer(ConditionalBinaryClassifier(6, ch=8), _loader(demo_sets["digits_train"], 8),
                               _cb_config(steps_per_epoch=2), _tiny_gan(), unlabeled_loader=unlabeled_loader)
    for batch in list(unlabeled_loader)[:5]:
        x_u, synth, wrong = trainer.unlabeled_negative_pairs(batch)
        assert (wrong != batch["label"]).all()
        assert synth.shape == x_u.shape
    _, metrics = trainer.train_epoch(1)
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["train_acc"] <= 1


def test_cb_ext_negatives_make_held_out_outlier_pairs_look_mismatched(demo_sets):
    """Cb(ext) vs Cb, same init and steps: the pseudo-labelled outlier negatives raise Cb's logit
    (> 0 = mismatched = OOD) on HELD-OUT outlier patches, while ID matched pairs stay below."""
    patches = demo_sets["china_patches"]
    pseudo = type(patches)(patches.name, patches.images, np.arange(len(patches)) % 6)
    half = len(patches) // 2
    train_u, test_u = pseudo.subset(np.arange(half)), pseudo.subset(np.arange(half, len(patches)))
    torch.manual_seed(0)
    gan, init = _tiny_gan(), ConditionalBinaryClassifier(6, ch=16)

    def trained(unlabeled_loader):
        torch.manual_seed(1)
        trainer = MoodcatCbTrainer(copy.deepcopy(init), _loader(demo_sets["digits_train"], 32), _cb_config(), gan,
                                   unlabeled_loader=unlabeled_loader)
        trainer.train_epoch(1)
        return trainer.net.eval(), trainer

    @torch.no_grad()
    def mean_logits(net, trainer):
        torch.manual_seed(2)
        outlier = [net(*trainer.unlabeled_negative_pairs(b)) for b in _loader(test_u, 128, train=False)]
        matched = []
        for b in _loader(demo_sets["digits_test"], 128, train=False):
            x, y = trainer.images_and_labels(b)
            matched.append(net(x, trainer.synthesize(x, y), y))
        return torch.cat(outlier).mean().item(), torch.cat(matched).mean().item()

    plain_out, _ = mean_logits(*trained(None))
    ext_out, ext_matched = mean_logits(*trained(_loader(train_u, 32)))
    print(f"held-out outlier logit: Cb {plain_out:.3f}, Cb(ext) {ext_out:.3f}; Cb(ext) ID matched {ext_matched:.3f}")
    assert ext_out > plain_out + 0.2
    assert ext_matched < ext_out


def test_cb_schedule_comes_from_the_method_file_profile():
    """Issue 8, defect 3b: the Cb schedule (steps, lr, width) is the profile's config, and the
    trainer uses exactly those values (no constant in code overrides them)."""
    from moodcat_plugin.pipeline import build_config, method_config
    cfg = method_config(build_config("demo", ["moodcat"], "cpu"), "moodcat")
    assert (cfg.cb.num_epochs * cfg.cb.steps_per_epoch, float(cfg.cb.lr), cfg.cb_network.ch) == (2000, 1e-3, 32)
    section = {**dict(cfg.cb), "steps_per_epoch": 7, "lr": 3e-3}
    cb = ConditionalBinaryClassifier(6, ch=8)
    trainer = MoodcatCbTrainer(cb, [None], _config(section), generator=_tiny_gan().eval())
    assert trainer.steps_per_epoch() == 7
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [3e-3]
    assert tuple(trainer.optimizer.param_groups[0]["betas"]) == tuple(cfg.cb.betas)


def test_class_consistency_loss_reaches_losses_csv(demo_sets, tmp_path):
    """With a classifier (class_consistency_weight > 0) its loss is a column of losses.csv, step by
    step (it used to reach only the epoch means); without one the columns stay as they were."""
    from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32
    from moodcat_plugin.trainers.moodcat_gan_trainer import LOSS_COLUMNS

    loader = _loader(demo_sets["digits_train"], 8)
    config = _config(_gan_section(num_epochs=1, class_consistency_weight=1.0))
    trainer = MoodcatGANTrainer(_tiny_gan(), loader, config, classifier=ResNet18_32x32(num_classes=6, width=0.125))
    fit(trainer, tmp_path / "gan", progress=False)
    with open(tmp_path / "gan" / "losses.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(np.isfinite(float(r["class_consistency"])) for r in rows)
    assert tuple(rows[0]) == LOSS_COLUMNS + ("class_consistency",)
    plain = MoodcatGANTrainer(_tiny_gan(), loader, _config(_gan_section(num_epochs=1)))
    assert plain.loss_columns() == LOSS_COLUMNS
