"""Statistics and invariants of the MOODCAT masking styles."""
import pytest
import torch

from moodcat_plugin.moodcat.masking import VALID_STYLES, apply_mask, random_rectangle_mask


def _ones(batch):
    return torch.ones(batch, 3, 32, 32)


def _masked_fraction(masked):
    """Per-sample fraction of pixels set to 0 (inputs are all ones)."""
    return (masked == 0).all(dim=1).float().mean(dim=(1, 2))


def test_random_rectangle_area_statistics():
    gen = torch.Generator().manual_seed(0)
    fractions = _masked_fraction(random_rectangle_mask(_ones(2000), generator=gen))
    assert fractions.min() >= 0.10 and fractions.max() <= 0.33
    # area ~ U(0.10, 0.33): expectation 0.215, standard error ~0.0015 over 2000 samples
    assert abs(fractions.mean().item() - 0.215) < 0.01
    assert fractions.std() > 0.04  # rectangles really differ per sample


def test_random_rectangle_is_a_rectangle_with_valid_aspect():
    gen = torch.Generator().manual_seed(1)
    masked = random_rectangle_mask(_ones(200), generator=gen)
    zero = (masked == 0).all(dim=1)
    rows = zero.any(dim=2).sum(dim=1)
    cols = zero.any(dim=1).sum(dim=1)
    assert torch.equal(rows * cols, zero.sum(dim=(1, 2)))  # solid rectangle
    aspect = rows.float() / cols.float()
    assert aspect.min() >= 0.5 * 0.8 and aspect.max() <= 2.5 * 1.2  # rounding slack


def test_test_area_range_and_fill_value():
    gen = torch.Generator().manual_seed(2)
    x = torch.full((300, 3, 32, 32), 0.7)
    masked = apply_mask(x, "random_rectangle", area=(0.15, 0.33), fill=-1.0, generator=gen)
    fractions = (masked == -1.0).all(dim=1).float().mean(dim=(1, 2))
    assert fractions.min() >= 0.15 and fractions.max() <= 0.33
    assert torch.equal(x, torch.full_like(x, 0.7))  # input untouched


def test_masking_is_deterministic_given_generator():
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    for style in ("random_rectangle", "patched", "shuffle"):
        a = apply_mask(x, style, generator=torch.Generator().manual_seed(5))
        b = apply_mask(x, style, generator=torch.Generator().manual_seed(5))
        c = apply_mask(x, style, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c), style


@pytest.mark.parametrize("style, percent", [("fixed_high", 31.6), ("fixed_low", 9.8)])  # the paper's areas
def test_fixed_styles_exact_area(style, percent):
    fractions = _masked_fraction(apply_mask(_ones(3), style))
    assert torch.equal(fractions, fractions[:1].expand(3))  # the same mask for every image
    assert round(100 * fractions[0].item(), 1) == percent


def test_fixed_high_is_centred():
    zero = (apply_mask(_ones(1), "fixed_high")[0, 0] == 0)
    assert zero[7:25, 7:25].all() and zero.sum() == 18 * 18


@pytest.mark.parametrize("patch_fraction, n_patches", [(0.5, 32), (0.3125, 20)])
def test_patched_masks_whole_patches(patch_fraction, n_patches):
    gen = torch.Generator().manual_seed(3)
    masked = apply_mask(_ones(8), "patched", patch_fraction=patch_fraction, generator=gen)
    zero = (masked == 0).all(dim=1).float()
    per_patch = zero.view(8, 8, 4, 8, 4).mean(dim=(2, 4))
    assert torch.all((per_patch == 0) | (per_patch == 1))  # patches are all-or-nothing
    assert torch.all(per_patch.sum(dim=(1, 2)) == n_patches)
    assert not torch.equal(per_patch[0], per_patch[1])  # per-sample patterns


def test_shuffle_preserves_pixel_multiset_and_moves_patches():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    shuffled = apply_mask(x, "shuffle", generator=gen)
    assert shuffled.shape == x.shape and not torch.equal(shuffled, x)
    for i in range(4):
        assert torch.equal(x[i].flatten().sort().values, shuffled[i].flatten().sort().values)
    # 4x4 patches stay intact: every output patch equals some input patch
    patches_in = x[0].unfold(1, 4, 4).unfold(2, 4, 4).permute(1, 2, 0, 3, 4).reshape(64, -1)
    patches_out = shuffled[0].unfold(1, 4, 4).unfold(2, 4, 4).permute(1, 2, 0, 3, 4).reshape(64, -1)
    matches = (patches_out[:, None] == patches_in[None]).all(dim=2)
    assert torch.all(matches.sum(dim=1) == 1)


def test_none_returns_copy():
    x = torch.rand(2, 3, 32, 32)
    out = apply_mask(x, "none")
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_unknown_style_names_valid_ones():
    with pytest.raises(ValueError) as info:
        apply_mask(_ones(1), "checkerboard")
    for style in VALID_STYLES:
        assert style in str(info.value)
