"""Schema of a whole run config (``pipeline.build_config`` checks it before any data loading).

Run-wide keys (``configs/base.yml``) and the benchmark file (``dataset:``) are described here;
the ``network``, ``trainer`` and every ``postprocessors.<method>`` section by the schemas their
registered classes declare (:mod:`moodcat_plugin.schema`). :func:`check_run_config` raises a
one-line :class:`~moodcat_plugin.errors.ConfigError` on the first problem.
"""
from __future__ import annotations

from typing import Annotated, Dict, Mapping

from pydantic import Field, model_validator

from moodcat_plugin.data.loaders import AUGMENT_LIST
from moodcat_plugin.evaluation.metrics import FPR_CONVENTIONS
from moodcat_plugin.registry import NETWORKS, TRAINERS
from moodcat_plugin.schema import (FLAG, SECTION, TEXT, Expect, Registered, Schema, check, check_method_section,
                                   check_registered, choice, either, integer, list_of, number, optional)

DEVICE = Annotated[str, Field(strict=True, pattern=r"^(auto|cpu|cuda(:\d+)?)$"), Expect("auto, cpu, cuda or cuda:N")]


class SetSpec(Schema):
    """Where one image set comes from, per source (see ``moodcat_plugin/data/benchmark.py``)."""

    npz: optional(TEXT) = None        # file stem in the npz data pack
    imglist: optional(TEXT) = None    # OpenOOD image list under the data root
    demo: optional(TEXT) = None       # embedded demo set

    @model_validator(mode="after")
    def _names_a_source(self):
        if self.npz is None and self.imglist is None and self.demo is None:
            raise ValueError("must name where the set comes from (npz, imglist or demo)")
        return self


class IdSplits(Schema):
    train: SetSpec
    val: SetSpec
    test: SetSpec


NAMED_SETS = optional(Annotated[Dict[str, SetSpec], Expect("a mapping of set name -> {npz/imglist/demo: ...}")])


class Splits(Schema):
    id: IdSplits
    ood_val: SetSpec
    outlier: optional(SetSpec) = None
    near: NAMED_SETS = None
    far: NAMED_SETS = None


class Normalization(Schema):
    mean: list_of(number(), length=3, expect="a list of 3 numbers (one per RGB channel)")
    std: list_of(number(gt=0), length=3, expect="a list of 3 numbers > 0 (one per RGB channel)")


class BenchmarkConfig(Schema):
    """A benchmark file (``configs/benchmarks/*.yml``)."""

    name: TEXT
    num_classes: integer(ge=2)
    image_size: integer(ge=1) = 32
    default_profile: optional(TEXT) = None
    normalization: Normalization
    train_augment: AUGMENT_LIST = []
    class_names: optional(list_of(TEXT)) = None   # for labelled pictures; length num_classes
    splits: Splits


class RunConfig(Schema):
    """The run-wide keys of ``configs/base.yml``; the sections are checked on their own."""

    seed: integer(ge=0)
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


def check_run_config(config: Mapping) -> None:
    """Every key of a merged run config: run-wide keys and benchmark, the classifier's network and
    trainer, and each method section (its postprocessor, own trainer/network, extra sections)."""
    check(RunConfig, config, "")
    check_registered(Registered(NETWORKS), config["network"], "network")
    check_registered(Registered(TRAINERS), config["trainer"], "trainer")
    for method, section in config["postprocessors"].items():
        check_method_section(section, f"postprocessors.{method}")
