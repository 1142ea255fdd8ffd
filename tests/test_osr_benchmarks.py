"""Class subsets of a benchmark (open-set recognition, paper Table 3): known classes relabelled
0..K-1, unknown classes selected as OOD, the splits and draws as documented, errors at load."""
import numpy as np
import pytest

from moodcat_plugin.config import load_yaml
from moodcat_plugin.data import load_benchmark
from moodcat_plugin.errors import ConfigError, DataError
from moodcat_plugin.paper.osr import (CIFAR100_ANIMALS, CIFAR6_SPLITS, CIFAR_PLUS_KNOWN, DRAW_SEED, PLUS10_DRAWS,
                                      draw_unknown_classes)
from moodcat_plugin.pipeline import build_config, default_config_root
from moodcat_plugin.run_schema import check_class_selection

BENCHMARKS = default_config_root() / "benchmarks"


def _config(benchmark, *overrides, pack=None):
    flags = {"device": "cpu", "progress": False, "data_root": str(pack) if pack else None}
    return build_config(benchmark, ["msp"], "tiny", overrides=list(overrides), flags=flags)


def test_known_classes_are_relabelled_and_unknown_ones_are_ood(fake_data_pack):
    known, unknown = CIFAR6_SPLITS[1]
    bench = load_benchmark(_config("osr_cifar6_split1").dataset, str(fake_data_pack), progress=False)
    original = np.load(fake_data_pack / "cifar10_train20k.npz")
    assert bench.num_classes == 6
    for split, per_class in (("train", 8), ("val", 3), ("test", 4)):
        assert np.bincount(bench.id[split].labels).tolist() == [per_class] * 6
    for label, cifar_class in enumerate(known):  # label k holds exactly the images of known[k]
        expected = original["images"][original["labels"] == cifar_class]
        assert np.array_equal(bench.id["train"].images[bench.id["train"].labels == label], expected)
    assert list(bench.near) == ["unknown"] and not bench.far
    test = np.load(fake_data_pack / "cifar10_test.npz")
    assert np.array_equal(bench.near["unknown"].images, test["images"][np.isin(test["labels"], unknown)])
    assert set(bench.near["unknown"].labels) == {-1}


def test_cifar_plus_sets_share_one_training_and_hold_only_their_classes(fake_data_pack):
    bench = load_benchmark(_config("osr_cifar_plus").dataset, str(fake_data_pack), progress=False)
    assert bench.num_classes == 4 and len(bench.id["train"]) == 4 * 8
    assert {name: len(array) for name, array in bench.near.items()} == {
        **{f"plus10_draw{i}": 10 for i in range(PLUS10_DRAWS)}, "plus50": 50}  # one test image per class


def test_splits_and_draws_are_the_documented_ones():
    """The benchmark files hold the authors' three CIFAR splits and our seeded CIFAR+N draws."""
    for index, (known, unknown) in enumerate(CIFAR6_SPLITS):
        spec = load_yaml(BENCHMARKS / f"osr_cifar6_split{index}.yml")
        assert spec["known_classes"] == known and spec["splits"]["near"]["unknown"]["classes"] == unknown
    spec = load_yaml(BENCHMARKS / "osr_cifar_plus.yml")
    assert spec["known_classes"] == CIFAR_PLUS_KNOWN == [0, 1, 8, 9]  # airplane, automobile, ship, truck
    draws = draw_unknown_classes(list(CIFAR100_ANIMALS), 10, PLUS10_DRAWS, DRAW_SEED)
    assert [spec["splits"]["near"][f"plus10_draw{i}"]["classes"] for i in range(PLUS10_DRAWS)] == draws
    assert len({tuple(d) for d in draws}) == PLUS10_DRAWS
    assert spec["splits"]["near"]["plus50"]["classes"] == sorted(CIFAR100_ANIMALS)
    assert len(CIFAR100_ANIMALS) == 50


@pytest.mark.parametrize("override, message", [
    ("dataset.known_classes=[0, 1, 2]",
     "config key 'dataset.known_classes' names 3 classes but num_classes is 6; make them agree"),
    ("dataset.known_classes=[0, 0, 2, 8, 1, 9]", "config key 'dataset.known_classes' must not name a class twice"),
    ("dataset.splits.near.unknown.classes=[6, 4, 5, 0]",
     "config key 'dataset.splits.near.unknown.classes' includes known class(es) [0] of cifar10_test"),
])
def test_class_selection_mistakes_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError) as caught:
        _config("osr_cifar6_split0", override)
    assert str(caught.value).startswith(message)


def test_id_splits_take_their_classes_from_known_classes():
    """A benchmark file giving an ID split its own class list (the files set the keys, not --set)."""
    dataset = load_yaml(BENCHMARKS / "osr_cifar6_split0.yml")
    dataset["splits"]["id"]["val"]["classes"] = [0]
    with pytest.raises(ConfigError, match=r"^config key 'dataset.splits.id.val.classes': ID sets take their classes "
                                          r"from 'dataset.known_classes'"):
        check_class_selection(dataset)


def test_an_ood_set_from_an_id_file_must_name_its_classes():
    with pytest.raises(ConfigError, match="reads the ID file cifar10_test, all of whose classes are ID"):
        _config("cifar10", "dataset.splits.near.cifar100.npz=cifar10_test")


def test_a_class_without_images_is_a_data_error_at_load(fake_data_pack):
    config = _config("osr_cifar_plus", "dataset.splits.near.plus50.classes=[1, 2, 150]")
    with pytest.raises(DataError, match=r"near-OOD set 'plus50' \(.*cifar100_test.npz\) has no images of class\(es\) "
                                        r"\[150\]"):
        load_benchmark(config.dataset, str(fake_data_pack), progress=False)
