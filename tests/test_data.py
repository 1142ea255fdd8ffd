"""Data: demo benchmark, npz pack, OpenOOD image lists, and the errors for missing/bad data."""
import numpy as np
import pytest
from PIL import Image
from torchvision import transforms

from moodcat_plugin.data import load_benchmark, make_loader
from moodcat_plugin.data.arrays import read_imglist
from moodcat_plugin.data.demo import build_demo_sets
from moodcat_plugin.errors import ConfigError, DataError


def _spec(**splits):
    return {"name": "toy", "num_classes": 2, "normalization": {"mean": [0.5] * 3, "std": [0.5] * 3},
            "splits": splits}


def _write_npz(folder, name, n, labels):
    images = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    np.savez(folder / f"{name}.npz", images=images, labels=np.asarray(labels))


def test_demo_sets_are_disjoint_and_shaped():
    sets = build_demo_sets()
    assert set(np.unique(sets["digits_train"].labels)) == {0, 1, 2, 3, 4, 5}
    assert set(np.unique(sets["digits_6to9"].labels)) == {6, 7, 8, 9}
    assert sets["digits_train"].images.shape[1:] == (32, 32, 3)
    assert not (sets["china_patches"].images.mean() == sets["flower_patches"].images.mean())


def test_npz_benchmark_skips_missing_optional_sets(tmp_path):
    for name in ("tr", "va", "te"):
        _write_npz(tmp_path, name, 8, [0, 1] * 4)
    _write_npz(tmp_path, "oodval", 6, [-1] * 6)
    _write_npz(tmp_path, "near1", 5, [3] * 5)
    spec = _spec(id={"train": {"npz": "tr"}, "val": {"npz": "va"}, "test": {"npz": "te"}},
                 ood_val={"npz": "oodval"}, near={"near1": {"npz": "near1"}, "gone": {"npz": "gone"}})
    bench = load_benchmark(spec, str(tmp_path))
    assert list(bench.near) == ["near1"] and bench.missing == ["gone"]
    assert (bench.near["near1"].labels == -1).all()


def test_missing_required_file_names_path_and_fix(tmp_path):
    spec = _spec(id={"train": {"npz": "tr"}, "val": {"npz": "va"}, "test": {"npz": "te"}}, ood_val={"npz": "x"})
    with pytest.raises(DataError, match=r"tr\.npz.*--data-root"):
        load_benchmark(spec, str(tmp_path))


def test_missing_data_root(tmp_path):
    spec = _spec(id={"train": {"npz": "tr"}, "val": {"npz": "va"}, "test": {"npz": "te"}}, ood_val={"npz": "x"})
    with pytest.raises(DataError, match="does not exist.*--benchmark demo"):
        load_benchmark(spec, str(tmp_path / "nowhere"))
    (tmp_path / "pack.npz").write_bytes(b"")
    with pytest.raises(DataError, match="pack.npz is a file, not a folder"):
        load_benchmark(spec, str(tmp_path / "pack.npz"))


def test_wrong_number_of_classes(tmp_path):
    for name in ("tr", "va", "te"):
        _write_npz(tmp_path, name, 6, [0, 1, 5] * 2)
    _write_npz(tmp_path, "oodval", 3, [-1] * 3)
    spec = _spec(id={"train": {"npz": "tr"}, "val": {"npz": "va"}, "test": {"npz": "te"}}, ood_val={"npz": "oodval"})
    with pytest.raises(DataError, match="num_classes=2"):
        load_benchmark(spec, str(tmp_path))


def test_openood_imglist_layout(tmp_path):
    images = tmp_path / "images_classic" / "toy"
    images.mkdir(parents=True)
    lists = tmp_path / "benchmark_imglist" / "toy"
    lists.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2), ("test", 2), ("oodval", 2)):
        lines = []
        for i in range(n):
            # 40x48 images exercise OpenOOD's resize + centre crop to 32
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{split}{i}.png")
            extra = '{"class_label": 1}' if split == "train" and i == 0 else (str(i % 2) if split != "oodval" else "-1")
            lines.append(f"toy/{split}{i}.png {extra}")
        (lists / f"{split}.txt").write_text("\n".join(lines) + "\n")
    spec = _spec(id={s: {"imglist": f"benchmark_imglist/toy/{s}.txt"} for s in ("train", "val", "test")},
                 ood_val={"imglist": "benchmark_imglist/toy/oodval.txt"},
                 far={"absent": {"imglist": "benchmark_imglist/toy/absent.txt"}})
    bench = load_benchmark(spec, str(tmp_path), progress=False)
    assert bench.id["train"].images.shape == (4, 32, 32, 3)
    assert bench.id["train"].labels.tolist() == [1, 1, 0, 1]
    assert bench.missing == ["absent"]


# (width, height, PIL mode): non-square (crop offsets that round, resizes of the long side), square,
# grayscale and RGBA. The old hand-rolled reader differed from torchvision on most of the non-square ones.
IMGLIST_CASES = [(45, 32, "RGB"), (32, 77, "RGB"), (100, 100, "RGB"), (47, 32, "RGB"), (32, 35, "RGB"),
                 (70, 45, "RGB"), (37, 33, "RGB"), (640, 480, "RGB"), (61, 100, "L"), (47, 32, "L"),
                 (70, 45, "RGBA"), (32, 32, "RGBA")]


def openood_test_pixels(path):
    """What OpenOOD's ImglistDataset + TestStandardPreProcessor feed the network for a 32x32 benchmark,
    before Normalize, as uint8 HWC: convert RGB, Resize(32, bilinear), CenterCrop(32), ToTensor."""
    chain = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BILINEAR),
                                transforms.CenterCrop(32), transforms.ToTensor()])
    with Image.open(path) as image:
        tensor = chain(image.convert("RGB"))
    return (tensor * 255).round().byte().permute(1, 2, 0).numpy()


def test_imglist_pixels_equal_torchvision_resize_and_center_crop(tmp_path):
    rng = np.random.default_rng(1)
    lines, paths = [], []
    for width, height, mode in IMGLIST_CASES:
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        path = tmp_path / f"{width}x{height}_{mode}.png"
        Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)
        paths.append(path)
        lines.append(f"{path.name} 0")
    listfile = tmp_path / "list.txt"
    listfile.write_text("\n".join(lines) + "\n")
    read = read_imglist(listfile, tmp_path, "cases", image_size=32, progress=False)
    assert read.images.shape == (len(IMGLIST_CASES), 32, 32, 3)
    for (width, height, mode), path, image in zip(IMGLIST_CASES, paths, read.images):
        np.testing.assert_array_equal(image, openood_test_pixels(path), err_msg=f"{width}x{height} {mode}")
    # hand check: a 47x32 RGB image needs no resize; torchvision's crop starts at column
    # round((47 - 32) / 2) = round(7.5) = 8 (the old reader started at 7)
    with Image.open(paths[3]) as original:
        np.testing.assert_array_equal(read.images[3], np.asarray(original)[:, 8:40])


def test_loader_batches_are_openood_dicts():
    sets = build_demo_sets()
    loader = make_loader(sets["digits_val"], [0.3] * 3, [0.3] * 3, batch_size=16, train=True, augment=["crop", "flip"])
    batch = next(iter(loader))
    assert set(batch) == {"data", "label", "index"}
    assert batch["data"].shape == (16, 3, 32, 32) and batch["data"].dtype.is_floating_point


# -- issue 9: every data problem is a one-line error at load, before any training -----------------
def _toy_pack(folder, sizes=None, **overrides):
    """ID train/val/test + OOD-val + one near set as npz files; ``overrides`` replace (images, labels)."""
    rng = np.random.default_rng(0)
    for name in ("tr", "va", "te", "oodval", "near1"):
        images = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
        labels = np.array([0, 1, 0, 1]) if name in ("tr", "va", "te") else np.full(4, -1)
        images, labels = overrides.get(name, (images, labels))
        np.savez(folder / f"{name}.npz", images=images, labels=labels)
    return _spec(id={"train": {"npz": "tr"}, "val": {"npz": "va"}, "test": {"npz": "te"}},
                 ood_val={"npz": "oodval"}, near={"near1": {"npz": "near1"}})


def _one_line_error(excinfo):
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_wrong_image_size_names_set_shape_and_image_size(tmp_path):
    small = np.zeros((4, 28, 28, 3), dtype=np.uint8)
    spec = _toy_pack(tmp_path, near1=(small, np.full(4, -1)))
    with pytest.raises(DataError) as excinfo:
        load_benchmark(spec, str(tmp_path))
    message = _one_line_error(excinfo)
    assert "'near1'" in message and "(28, 28, 3)" in message and "image_size is 32" in message
    assert "near1.npz" in message


def test_non_integral_float_labels_fail_integral_floats_pass(tmp_path):
    spec = _toy_pack(tmp_path, tr=(np.zeros((4, 32, 32, 3), np.uint8), np.array([0.0, 1.0, 0.0, 1.0])))
    assert load_benchmark(spec, str(tmp_path)).id["train"].labels.tolist() == [0, 1, 0, 1]
    spec = _toy_pack(tmp_path, tr=(np.zeros((4, 32, 32, 3), np.uint8), np.array([0.0, 1.5, 0.0, 1.0])))
    with pytest.raises(DataError) as excinfo:
        load_benchmark(spec, str(tmp_path))
    message = _one_line_error(excinfo)
    assert "integer" in message and "1.5" in message and "tr.npz" in message


@pytest.mark.parametrize("damage", ["truncated", "bad_crc", "empty_file", "not_npz", "no_labels", "random_bytes"])
def test_corrupt_npz_is_one_line_data_error_naming_file(tmp_path, damage):
    spec = _toy_pack(tmp_path)
    path = tmp_path / "te.npz"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "bad_crc":
        np.savez_compressed(path, images=np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8),
                            labels=np.array([0, 1, 0, 1]))
        data = bytearray(path.read_bytes())
        data[200:240] = b"x" * 40
        path.write_bytes(bytes(data))
    elif damage == "empty_file":
        path.write_bytes(b"")
    elif damage == "not_npz":
        path.write_text("<html>404 not found</html>")
    elif damage == "random_bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    else:
        np.savez(path, images=np.zeros((4, 32, 32, 3), np.uint8))
    with pytest.raises(DataError) as excinfo:
        load_benchmark(spec, str(tmp_path))
    message = _one_line_error(excinfo)
    assert str(path) in message and ("re-create" in message or "'labels'" in message)
    assert "pickle" not in message  # numpy's guess for anything not a zip/npy, misleading here


@pytest.mark.parametrize("empty_set", ["te", "oodval", "near1"])
def test_empty_sets_fail_at_load(tmp_path, empty_set):
    empty = (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))
    spec = _toy_pack(tmp_path, **{empty_set: empty})
    with pytest.raises(DataError, match=rf"{empty_set}\.npz\) holds no images"):
        load_benchmark(spec, str(tmp_path))


def test_benchmark_without_id_test_names_the_key(tmp_path):
    spec = _toy_pack(tmp_path)
    del spec["splits"]["id"]["test"]
    with pytest.raises(ConfigError) as excinfo:
        load_benchmark(spec, str(tmp_path))
    assert "splits.id.test" in _one_line_error(excinfo)


def test_malformed_set_spec_names_the_key(tmp_path):
    spec = _toy_pack(tmp_path)
    spec["splits"]["near"]["near1"] = "near1"  # a bare name instead of {npz: near1}
    with pytest.raises(ConfigError, match=r"splits\.near\.near1 must map a source"):
        load_benchmark(spec, str(tmp_path))


def test_unknown_demo_set_lists_valid_ones():
    spec = _spec(id={"train": {"demo": "digits_train"}, "val": {"demo": "digits_val"}, "test": {"demo": "digits_tset"}},
                 ood_val={"demo": "digits_6to9_val"})
    spec["num_classes"] = 6
    with pytest.raises(DataError) as excinfo:
        load_benchmark(spec, None)
    message = _one_line_error(excinfo)
    assert "'digits_tset'" in message and "digits_test" in message and "flower_patches" in message
