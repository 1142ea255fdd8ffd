"""Shapes, value ranges, parameter counts and gradient flow of the MOODCAT networks."""
import pytest
import torch

from moodcat_plugin.networks.biggan_decoder import BigGANDecoder
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_encoder import MoodcatEncoder
from moodcat_plugin.networks.moodcat_layers import (
    ClassConditionalBatchNorm2d, SelfAttention2d, count_parameters)
from moodcat_plugin.networks.unet_discriminator import UNetDiscriminator

# Small widths keep the functional tests fast; parameter counts use the reference widths.
SMALL = 8
BATCH = 2


def _images(batch=BATCH, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1


def _labels(num_classes=10, batch=BATCH):
    return torch.arange(batch) % num_classes


def _assert_finite_grads(model):
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads), "some parameter got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("factory, reference", [
    (lambda: MoodcatEncoder(ch=32, latent_dim=128), 460_928),
    (lambda: BigGANDecoder(10, ch=32, latent_dim=128), 3_821_955),
    (lambda: BigGANDecoder(100, ch=32, latent_dim=128), 3_833_475),
    (lambda: UNetDiscriminator(10, ch=32), 4_145_507),
    (lambda: ConditionalBinaryClassifier(10, ch=64), 272_450),
    (lambda: ConditionalBinaryClassifier(100, ch=64), 278_210),
])
def test_parameter_counts_match_reference(factory, reference):
    count = count_parameters(factory())
    assert abs(count - reference) <= 0.02 * reference, (count, reference)


def test_parameter_counts_exact_where_layout_identical():
    assert count_parameters(MoodcatEncoder()) == 460_928
    assert count_parameters(BigGANDecoder(10)) == 3_821_955
    assert count_parameters(ConditionalBinaryClassifier(10)) == 272_450
    # The reference U-Net builds one unused SNLinear(32 -> 1) (33 parameters) we omit.
    assert count_parameters(UNetDiscriminator(10)) == 4_145_507 - 33


def test_spectral_norm_vectors_are_buffers_not_parameters():
    names = [n for n, _ in UNetDiscriminator(3, ch=SMALL).named_parameters()]
    assert not any(n.endswith("_u") or n.endswith("_v") for n in names)
    assert any("parametrizations.weight.original" in n for n in names)


def test_encoder_shapes_and_sampling():
    encoder = MoodcatEncoder(ch=SMALL, latent_dim=16)
    x = _images()
    z, mu, logvar = encoder(x)
    assert z.shape == mu.shape == logvar.shape == (BATCH, 16)
    assert not torch.equal(z, mu)  # training mode samples
    encoder.eval()
    z1, mu1, _ = encoder(x)
    z2, _, _ = encoder(x)
    assert torch.equal(z1, mu1) and torch.equal(z1, z2)


def test_encoder_rejects_wrong_size():
    with pytest.raises(ValueError):
        MoodcatEncoder(ch=SMALL)(torch.zeros(1, 3, 64, 64))


def test_decoder_output_range_and_label_dependence():
    torch.manual_seed(0)
    decoder = BigGANDecoder(10, ch=SMALL, latent_dim=16).eval()
    z = torch.randn(BATCH, 16)
    out_a = decoder(z, torch.tensor([0, 1]))
    out_b = decoder(z, torch.tensor([2, 3]))
    assert out_a.shape == (BATCH, 3, 32, 32)
    assert out_a.min() >= -1 and out_a.max() <= 1
    assert (out_a - out_b).abs().max() > 1e-4


def test_unconditional_decoder_ignores_labels():
    torch.manual_seed(0)
    decoder = BigGANDecoder(10, ch=SMALL, latent_dim=16, conditional=False).eval()
    assert decoder.shared_embedding is None
    z = torch.randn(BATCH, 16)
    out = decoder(z, torch.tensor([0, 1]))
    assert torch.equal(out, decoder(z, torch.tensor([5, 7])))
    assert torch.equal(out, decoder(z, None))


def test_conditional_decoder_requires_labels():
    with pytest.raises(ValueError):
        BigGANDecoder(10, ch=SMALL, latent_dim=16)(torch.randn(1, 16), None)


def test_unet_discriminator_shapes_and_label_projection():
    torch.manual_seed(0)
    disc = UNetDiscriminator(10, ch=SMALL).eval()
    x = _images()
    bottleneck, pixels = disc(x, torch.tensor([0, 1]))
    assert bottleneck.shape == (BATCH,)
    assert pixels.shape == (BATCH, 1, 32, 32)
    other_b, other_p = disc(x, torch.tensor([4, 5]))
    assert not torch.allclose(bottleneck, other_b)
    assert not torch.allclose(pixels, other_p)


def test_conditional_binary_classifier_shapes():
    torch.manual_seed(0)
    cb = ConditionalBinaryClassifier(10, ch=SMALL).eval()
    x, x_synth = _images(seed=0), _images(seed=1)
    logit = cb(x, x_synth, torch.tensor([0, 1]))
    assert logit.shape == (BATCH,) and torch.isfinite(logit).all()
    assert not torch.allclose(logit, cb(x, x_synth, torch.tensor([3, 4])))


def test_gradients_flow_through_generator_and_discriminator():
    torch.manual_seed(0)
    encoder = MoodcatEncoder(ch=SMALL, latent_dim=16)
    decoder = BigGANDecoder(10, ch=SMALL, latent_dim=16)
    disc = UNetDiscriminator(10, ch=SMALL)
    x, y = _images(), _labels()
    z, mu, logvar = encoder(x)
    x_synth = decoder(z, y)
    bottleneck, pixels = disc(x_synth, y)
    loss = bottleneck.mean() + pixels.mean() + (x_synth - x).pow(2).mean() + logvar.exp().mean()
    loss.backward()
    for model in (encoder, decoder, disc):
        _assert_finite_grads(model)


def test_gradients_flow_through_cb():
    torch.manual_seed(0)
    cb = ConditionalBinaryClassifier(10, ch=SMALL)
    # Make attention's gamma non-zero so its convolutions receive gradient too.
    with torch.no_grad():
        cb.blocks[1].gamma.fill_(0.5)
    logit = cb(_images(seed=0), _images(seed=1), _labels())
    torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.tensor([0.0, 1.0])).backward()
    _assert_finite_grads(cb)


def test_building_blocks_shapes():
    cbn = ClassConditionalBatchNorm2d(8, cond_dim=4)
    assert cbn(torch.randn(2, 8, 4, 4), torch.randn(2, 4)).shape == (2, 8, 4, 4)
    attention = SelfAttention2d(16)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(attention(x), x)  # gamma starts at 0

