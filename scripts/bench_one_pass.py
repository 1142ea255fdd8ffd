#!/usr/bin/env python
"""One forward pass for every post-hoc detector: wall time of all the cached-output detectors
together against MSP alone, measured in one run (issue 26's target: at most 1.5x).

Builds the run as ``run_benchmark.py`` does (same benchmark, profile and ``--set`` flags; the
classifier must already be trained or is trained first, outside the timings), then times, each
with a fresh evaluator (empty in-memory output cache) writing scores under ``--output-dir``:

1. ``msp`` alone: one pass over the ID test and OOD test sets;
2. every registered detector whose ``needs`` is ``logits`` or ``features`` (APS, fits and all),
   with the ID-train pass they fit on taken from the classifier's cache (``outputs_train.npz``
   beside its checkpoint, made when the classifier is first used: the steady state);
3. the same with that file removed first (cold: the pass over the ID training images included).

Prints a Markdown snippet (command, machine, date, times, ratios) for BENCHMARKS.md. Example::

    python scripts/bench_one_pass.py -b cifar10 --profile cpu --set num_threads=2
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from moodcat_plugin.evaluation import Evaluator
from moodcat_plugin.pipeline import Runner, build_config, load_method_file, method_config
from moodcat_plugin.registry import POSTPROCESSORS


def cached_output_methods(config_root: Path):
    """Config names (configs/postprocessors/*.yml) whose postprocessor reads the shared pass of the
    benchmark's classifier (no trainer of their own), MSP excluded."""
    names = []
    for path in sorted(Path(config_root, "postprocessors").glob("*.yml")):
        section = load_method_file(Path(config_root), path.stem)
        cls = POSTPROCESSORS.get(section["postprocessor"]["name"])
        if cls.needs != "forward" and path.stem != "msp" and "trainer" not in section:
            names.append(path.stem)
    return names


def timed(runner: Runner, methods, net, checkpoint: Path):
    """(wall s, process CPU s) to score ``methods`` one after another with a fresh evaluator
    (empty output cache). CPU time is the fairer figure on a machine shared with other jobs."""
    runner.evaluator = Evaluator(runner.config, runner.benchmark, runner.results_dir)
    runner.evaluator.keep_train_outputs_beside(net, checkpoint)
    wall, cpu = time.perf_counter(), time.process_time()
    for method in methods:
        runner.run_method(method)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmark", "-b", default="cifar10")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default="results/bench_one_pass")
    parser.add_argument("--data-root", default="../shared/data")
    args = parser.parse_args(argv)
    config_root = Path(__file__).resolve().parents[1] / "configs"
    methods = cached_output_methods(config_root)
    config = build_config(args.benchmark, ["msp"] + methods, args.profile, overrides=args.overrides,
                          flags={"output_dir": args.output_dir, "data_root": args.data_root, "progress": False})
    runner = Runner(config)
    net, info = runner.network_for(method_config(runner.config, "msp"), "msp")  # trained or loaded, untimed
    checkpoint = Path(info["checkpoint"])
    msp = timed(runner, ["msp"], net, checkpoint)
    warm_train = checkpoint.parent / "outputs_train.npz"
    if not warm_train.is_file():  # the classifier's ID-train cache, made once (untimed)
        timed(runner, ["mds"], net, checkpoint)
    warm = timed(runner, methods, net, checkpoint)
    warm_train.unlink()
    cold = timed(runner, methods, net, checkpoint)
    command = "python scripts/bench_one_pass.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n`{command}` ({platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {datetime.date.today()})\n")
    print(f"Detectors reading the shared pass ({len(methods)}): {', '.join(methods)}\n")
    print("| run | wall s | x MSP alone (wall) | process CPU s | x MSP alone (CPU) |\n|---|---|---|---|---|")
    for label, (wall, cpu) in (("msp alone", msp),
                               (f"all {len(methods)}, ID-train outputs from the classifier's cache", warm),
                               (f"all {len(methods)}, cold (ID-train pass included)", cold)):
        print(f"| {label} | {wall:.1f} | {wall / msp[0]:.2f} | {cpu:.1f} | {cpu / msp[1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
