"""Output equality with the authors' MOODCAT code, through our importer of their released weights.

Reference: cure-lab/MOODCat at commit c3674ce ("Update README.md"), files ``models/BigGAN.py``
(``Encoder``, ``Generator``), ``models/layers.py``, ``models/Dis_ood.py`` (``Discriminator``, the
"cat6" Cb) and ``models/model_ops.py``. No reference code is in this repository; the fixture
``tests/fixtures/authors_moodcat_outputs.npz`` holds only numbers, made as follows:

1. copy those files (and ``misc/utils.py``, ``misc/datasets.py``, imported by ``BigGAN.py``) into a
   scratch folder outside the repository; stub the modules ``rich`` (its ``print`` only) and ``h5py``
   (dataset I/O), which the forward passes never use; torch 2.14.1 on CPU, one thread;
2. build, for C = 10 and 100, ``E = Encoder(isize=32, nz=128, nc=3, ndf=32)``,
   ``G = Generator(G_ch=32, dim_z=128, bottom_width=4, resolution=32, G_attn='0', n_classes=C,
   num_G_SVs=1, num_G_SV_itrs=1, G_shared=True, shared_dim=0, hier=False, SN_eps=1e-8, BN_eps=1e-5,
   G_init='ortho', unconditional=False, no_optim=True)`` and ``Cb = Discriminator(32, 32, True, True,
   1, 'ReLU', 'ProjGAN', 'N/A', C, False, False, 'ortho', 'N/A', False, input_dim=6)`` -- the
   evaluation script's construction (``mcoodcat_on_scood.py``);
3. replace each state dict by :func:`authors_reference.reference_layout_state` of its (key, shape)
   list (stored in the fixture's ``meta``) with seeds E 101, G 102, Cb 103; ``eval()`` all three;
4. inputs (stored): ``x``, ``x_other`` = ``rand(4,3,32,32)*2-1``, ``z``, ``eps`` = ``randn(4,128)`` from
   ``torch.Generator().manual_seed(7)`` in that order; labels C=10 [0,3,7,9], C=100 [0,17,63,99];
   one fixed rectangle per image ``boxes`` (top, left, h, w), erased to 0 with
   ``torchvision.transforms.functional.erase`` (what ``RandomErasing`` calls);
5. record ``mu, logvar = E(x)``; ``G(z, G.shared(y))``; ``Cb(cat([x, x_other], 1), y)``; and the
   whole path ``masked -> E -> z_sample -> G(z_sample, G.shared(y)) -> Cb(cat([x, x'], 1), y)`` with
   ``torch.randn_like`` patched to return ``eps`` (``path_eps``) and zeros (``path_zero``, which is
   our ``z = mu`` scoring).

The test writes the same weights as the authors' files (plain E/G state dicts, the Cb as
``{'state_dict': ...}``), imports them with :func:`import_authors_weights`, loads the result as
``--pretrained`` does and compares in fp32: ``atol 2e-5`` on images/latents in about [-1, 1] and
``rtol 1e-5, atol 1e-4`` on Cb logits of magnitude 2-30 (float32 rounding of different but
equivalent operation orders; measured: at most 8.3e-7 on mu/logvar/images and 1.9e-6
on logits, both class counts).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from authors_reference import reference_layout_state
from moodcat_plugin.moodcat.authors_weights import import_authors_weights
from moodcat_plugin.moodcat.masking import box_mask, fill_mask
from moodcat_plugin.moodcat.weights import full, load_weights
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_encoder import reparameterize
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "authors_moodcat_outputs.npz"
IMAGE_TOL = {"rtol": 0.0, "atol": 2e-5}
LOGIT_TOL = {"rtol": 1e-5, "atol": 1e-4}
BENCHMARKS = {10: "cifar10", 100: "cifar100"}
EPOCH = {10: 3999, 100: 3507}


@pytest.fixture(scope="module")
def fixture():
    data = np.load(FIXTURE)
    return {k: data[k] for k in data.files if k != "meta"}, json.loads(str(data["meta"]))


def write_reference_files(folder: Path, classes: int, meta: dict) -> dict:
    """The authors' three files for ``classes``, in their layout and names, with the fixture's weights."""
    layouts, seeds = meta[f"layouts_{classes}"], meta["seeds"]
    run = folder / "ckpt" / f"{BENCHMARKS[classes]}_ind"
    cb_folder = run / "discriminator_cat6_checkpoints"
    cb_folder.mkdir(parents=True, exist_ok=True)
    paths = {"encoder": run / f"E_ep_{EPOCH[classes]}.pth", "generator": run / f"G_ep_{EPOCH[classes]}.pth",
             "cb": cb_folder / "acc=D-best-weights-step=6500acc=0.85.pth"}
    torch.save(reference_layout_state(layouts["encoder"], seeds["encoder"]), paths["encoder"])
    torch.save(reference_layout_state(layouts["decoder"], seeds["decoder"]), paths["generator"])
    torch.save({"state_dict": reference_layout_state(layouts["cb"], seeds["cb"]), "step": 6500}, paths["cb"])
    return paths


def imported_networks(path: Path, classes: int):
    """(gan, cb) built from an imported weights file the way ``--pretrained`` builds them, eval mode."""
    content = load_weights(path)
    gan_kwargs = {k: v for k, v in content["gan_network"].items() if k != "name"}
    gan = MoodcatGAN(classes, **gan_kwargs)
    gan.encoder.load_state_dict(full(content["modules"]["encoder"]), strict=True)
    gan.decoder.load_state_dict(full(content["modules"]["decoder"]), strict=True)
    cb = ConditionalBinaryClassifier(classes, **{k: v for k, v in content["cb_network"].items() if k != "name"})
    cb.load_state_dict(full(content["modules"]["cb"]), strict=True)
    return gan.eval(), cb.eval()


@pytest.mark.parametrize("classes", [10, 100])
def test_imported_weights_compute_the_authors_outputs(classes, fixture, tmp_path):
    numbers, meta = fixture
    paths = write_reference_files(tmp_path, classes, meta)
    out = tmp_path / "weights" / f"authors_{BENCHMARKS[classes]}.pt"
    out.parent.mkdir()
    import_authors_weights(BENCHMARKS[classes], classes, paths["encoder"], paths["generator"], out, cb=paths["cb"])
    gan, cb = imported_networks(out, classes)
    t = {k: torch.from_numpy(v) for k, v in numbers.items()}
    y = torch.tensor(meta["labels"][str(classes)])
    expected = lambda name: t[f"c{classes}_{name}"]  # noqa: E731
    with torch.no_grad():
        _, mu, logvar = gan.encoder(t["x"])
        torch.testing.assert_close(mu, expected("mu"), **IMAGE_TOL)
        torch.testing.assert_close(logvar, expected("logvar"), **IMAGE_TOL)
        torch.testing.assert_close(gan.decoder(t["z"], y), expected("decoder"), **IMAGE_TOL)
        torch.testing.assert_close(cb(t["x"], t["x_other"], y), expected("cb"), **LOGIT_TOL)

        top, left, height, width = t["boxes"].T
        masked = fill_mask(t["x"], box_mask(32, 32, top, left, height, width))
        _, mu_m, logvar_m = gan.encoder(masked)
        synthesis = gan.decoder(reparameterize(mu_m, logvar_m, sample=True, noise=t["eps"]), y)
        torch.testing.assert_close(synthesis, expected("path_eps_synthesis"), **IMAGE_TOL)
        torch.testing.assert_close(cb(t["x"], synthesis, y), expected("path_eps_logit"), **LOGIT_TOL)
        # our scoring path (z = mu) is the authors' with eps = 0
        scored = gan.synthesize_from_masked(masked, y)
        torch.testing.assert_close(scored, expected("path_zero_synthesis"), **IMAGE_TOL)
        torch.testing.assert_close(cb(t["x"], scored, y), expected("path_zero_logit"), **LOGIT_TOL)


def test_the_authors_cb_needs_the_relu_shortcut(fixture, tmp_path):
    """The finding behind ``relu_shortcut``: with BigGAN's plain shortcut the same weights give
    other logits (the authors' in-place ReLU makes their shortcut read ReLU(x))."""
    numbers, meta = fixture
    paths = write_reference_files(tmp_path, 10, meta)
    out = tmp_path / "authors_cifar10.pt"
    import_authors_weights("cifar10", 10, paths["encoder"], paths["generator"], out, cb=paths["cb"])
    _, cb = imported_networks(out, 10)
    plain = ConditionalBinaryClassifier(10, ch=64, relu_shortcut=False).eval()
    plain.load_state_dict(cb.state_dict())
    x, other = torch.from_numpy(numbers["x"]), torch.from_numpy(numbers["x_other"])
    y = torch.tensor(meta["labels"]["10"])
    with torch.no_grad():
        gap = (plain(x, other, y) - torch.from_numpy(numbers["c10_cb"])).abs().max()
    assert gap > 0.5
