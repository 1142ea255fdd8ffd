"""Schema of a whole run config (``pipeline.build_config`` checks it before any data loading).

Run-wide keys (``configs/base.yml``) and the benchmark file (``dataset:``) are described here;
the ``network``, ``trainer`` and every ``postprocessors.<method>`` section by the schemas their
registered classes declare (:mod:`moodcat_plugin.schema`). :func:`check_run_config` raises a
one-line :class:`~moodcat_plugin.errors.ConfigError` on the first problem.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Mapping

from pydantic import AfterValidator, Field, field_validator, model_validator

from moodcat_plugin.data.loaders import AUGMENT_LIST
from moodcat_plugin.errors import ConfigError
from moodcat_plugin.evaluation.metrics import FPR_CONVENTIONS
from moodcat_plugin.registry import NETWORKS, TRAINERS
from moodcat_plugin.schema import (FLAG, PLAIN_NAME, SECTION, TEXT, Expect, Registered, Schema, check,
                                   check_method_section, check_registered, choice, either, integer, list_of, number,
                                   optional)

DEVICE = Annotated[str, Field(strict=True, pattern=r"^(auto|cpu|cuda(:\d+)?)$"), Expect("auto, cpu, cuda or cuda:N")]


def _distinct_classes(values: List[int]) -> List[int]:
    if len(set(values)) != len(values):
        raise ValueError("must not name a class twice")
    return values


#: A list of class ids of a data file (``known_classes``, a set's ``classes``).
CLASS_IDS = Annotated[list_of(integer(ge=0), min_length=1, expect="a non-empty list of class ids (integers >= 0)"),
                      AfterValidator(_distinct_classes)]


class SetSpec(Schema):
    """Where one image set comes from, per source (see ``moodcat_plugin/data/benchmark.py``)."""

    npz: optional(TEXT) = None        # file stem in the npz data pack
    imglist: optional(TEXT) = None    # OpenOOD image list under the data root
    demo: optional(TEXT) = None       # embedded demo set
    builtin: optional(TEXT) = None    # built from data inside scikit-learn, any data root (data/demo.py BUILTIN_SETS)
    classes: optional(CLASS_IDS) = None  # OOD/outlier sets: keep only these class ids of the file

    @model_validator(mode="after")
    def _names_a_source(self):
        if self.npz is None and self.imglist is None and self.demo is None and self.builtin is None:
            raise ValueError("must name where the set comes from (npz, imglist, demo or builtin)")
        return self


class IdSplits(Schema):
    train: SetSpec
    val: SetSpec
    test: SetSpec


NAMED_SETS = optional(Annotated[Dict[PLAIN_NAME, SetSpec], Expect("a mapping of set name -> {npz/imglist/demo: ...}")])


class Splits(Schema):
    id: IdSplits
    ood_val: SetSpec
    ood_val_far: optional(SetSpec) = None   # far-OOD validation (issue 27): selection data, never a test set
    outlier: optional(SetSpec) = None
    near: NAMED_SETS = None
    far: NAMED_SETS = None


class Normalization(Schema):
    mean: list_of(number(), length=3, expect="a list of 3 numbers (one per RGB channel)")
    std: list_of(number(gt=0), length=3, expect="a list of 3 numbers > 0 (one per RGB channel)")


class BenchmarkConfig(Schema):
    """A benchmark file (``configs/benchmarks/*.yml``)."""

    name: PLAIN_NAME  # results/<name>/ and the checkpoint runs' folder names
    num_classes: integer(ge=2)
    image_size: integer(ge=1) = 32
    default_profile: optional(TEXT) = None
    normalization: Normalization
    train_augment: AUGMENT_LIST = []
    class_names: optional(list_of(TEXT)) = None   # for labelled pictures; length num_classes
    known_classes: optional(CLASS_IDS) = None     # class subset: ID sets keep these ids, relabelled 0..K-1
    splits: Splits

    @field_validator("class_names")
    @classmethod
    def _one_name_per_class(cls, names, info):
        expected = info.data.get("num_classes")
        if names is not None and expected is not None and len(names) != expected:
            raise ValueError(f"must name each of the num_classes={expected} classes in label order, "
                             f"not {len(names)}")
        return names


class RunConfig(Schema):
    """The run-wide keys of ``configs/base.yml``; the sections are checked on their own."""

    seed: integer(ge=0, le=2**32 - 1)  # numpy seeds are 32-bit
    device: DEVICE
    profile: TEXT
    output_dir: TEXT
    checkpoint_dir: optional(TEXT) = None
    data_root: optional(TEXT) = None
    fpr_convention: choice(*FPR_CONVENTIONS)
    eval_batch_size: integer(ge=1)
    num_threads: either(choice("auto"), integer(ge=1)) = "auto"
    progress: FLAG = True
    dataset: BenchmarkConfig
    network: SECTION
    trainer: SECTION
    postprocessors: Annotated[Dict[str, SECTION], Expect("a mapping of method name -> method section")]


SPEC_SOURCES = ("npz", "imglist", "demo")


def _source_files(spec: Mapping) -> set:
    """(source, location) pairs a set spec reads, e.g. {('npz', 'cifar10_test')}."""
    return {(source, spec[source]) for source in SPEC_SOURCES if spec.get(source)}


def check_class_selection(dataset: Mapping) -> None:
    """Class subsets of a benchmark (open-set recognition): ``known_classes`` has ``num_classes``
    ids; ID splits take no ``classes`` of their own; an OOD set read from an ID split's file names
    ``classes`` disjoint from the ID classes (else known images would count as OOD). ConfigError."""
    known, splits, where = dataset.get("known_classes"), dataset["splits"], "dataset"
    if known is not None and len(known) != dataset["num_classes"]:
        raise ConfigError(f"config key '{where}.known_classes' names {len(known)} classes but num_classes is "
                          f"{dataset['num_classes']}; make them agree (the known classes become labels 0..K-1)")
    id_files = set()
    for split, spec in splits["id"].items():
        if spec.get("classes") is not None:
            raise ConfigError(f"config key '{where}.splits.id.{split}.classes': ID sets take their classes from "
                              f"'{where}.known_classes' (relabelled 0..K-1); move the list there")
        id_files |= _source_files(spec)
    for group in ("near", "far"):
        for name, spec in (splits.get(group) or {}).items():
            shared = [location for source, location in sorted(_source_files(spec) & id_files,
                                                                key=lambda pair: SPEC_SOURCES.index(pair[0]))]
            if not shared:
                continue
            key = f"{where}.splits.{group}.{name}"
            classes = spec.get("classes")
            if known is None:
                raise ConfigError(f"config key '{key}' reads the ID file {shared[0]}, all of whose classes are ID; "
                                  f"read another file, or set '{where}.known_classes' and '{key}.classes'")
            if classes is None:
                raise ConfigError(f"config key '{key}' reads the ID file {shared[0]}; name its unknown classes in "
                                  f"'{key}.classes' (disjoint from '{where}.known_classes')")
            overlap = sorted(set(classes) & set(known))
            if overlap:
                raise ConfigError(f"config key '{key}.classes' includes known class(es) {overlap} of {shared[0]}; "
                                  "OOD classes must be disjoint from known_classes")


def check_run_config(config: Mapping) -> None:
    """Every key of a merged run config: run-wide keys and benchmark, the classifier's network and
    trainer, and each method section (its postprocessor, own trainer/network, extra sections)."""
    check(RunConfig, config, "")
    check_class_selection(config["dataset"])
    check_registered(Registered(NETWORKS), config["network"], "network")
    check_registered(Registered(TRAINERS), config["trainer"], "trainer")
    for method, section in config["postprocessors"].items():
        check_method_section(section, f"postprocessors.{method}")
