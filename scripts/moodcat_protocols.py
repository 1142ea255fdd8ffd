#!/usr/bin/env python
"""MOODCAT protocol table: one trained MOODCAT scored under the deployable protocol (labels
predicted by the classifier), the authors' protocol (true labels on ID, random labels on OOD)
and true-ID / predicted-OOD (see :mod:`moodcat_plugin.moodcat.protocols`).

Uses the same config, caches and classifier as ``run_benchmark.py -p moodcat`` (same flags);
trains what is not cached. Writes ``<output>/<benchmark>/protocols.{md,json}``, never a
leaderboard row. ``--pretrained FILE`` scores a weights file (ours, or the authors' imported with
scripts/import_moodcat_weights.py) instead of training. Examples::

    python scripts/moodcat_protocols.py -b cifar10 --profile cpu --output-dir results
    python scripts/moodcat_protocols.py -b cifar10 --pretrained weights/authors/moodcat_cifar10_authors.pt \
        --set "postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]"
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moodcat_plugin.moodcat.protocols import protocol_table, render_protocol_table
from moodcat_plugin.pipeline import Runner, build_config, default_config_root, pretrained_flags
from moodcat_plugin.utils import atomic_write_json, atomic_write_text, run_guarded


def protocols(args) -> str:
    flags = {"output_dir": args.output_dir, "data_root": args.data_root, "device": args.device,
             "progress": False if args.no_progress else None,
             "postprocessors": pretrained_flags([args.method], args.pretrained, default_config_root())
             if args.pretrained else None}
    config = build_config(args.benchmark, [args.method], args.profile, overrides=args.overrides, flags=flags)
    runner = Runner(config)
    post, net, _ = runner.prepare_method(args.method)
    post.train(net, runner.evaluator.id_loader_dict)
    evaluator = runner.evaluator
    groups = {group: evaluator.ood_loader_dict[group] for group in ("near", "far")}
    table = protocol_table(post, net, evaluator.id_loader_dict["test"], groups, runner.benchmark.num_classes)
    cb = post.training_info.get("moodcat_cb", {})
    source = (f"from the weights file {cb['pretrained']} (sha256 {cb['sha256'][:12]}...)" if "pretrained" in cb else
              f"from {Path(cb.get('folder', '?')).parent}")
    note = (f"Profile {config.profile}, seed {config.seed}, method `{args.method}`, the benchmark's shared "
            f"classifier; Cb binary val accuracy {cb.get('val_acc', float('nan')):.3f}; generator and Cb {source}.")
    markdown = render_protocol_table(table, config.dataset.name, note)
    atomic_write_text(markdown, runner.results_dir / "protocols.md")
    atomic_write_json(table, runner.results_dir / "protocols.json")
    return markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", "-b", default="cifar10")
    parser.add_argument("--method", default="moodcat", help="a MOODCAT method config (default moodcat)")
    parser.add_argument("--profile")
    parser.add_argument("--output-dir", default="results")
    parser.add_argument("--data-root")
    parser.add_argument("--device")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--pretrained", metavar="FILE", help="score this MOODCAT weights file instead of training")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    return run_guarded(lambda: protocols(args))


if __name__ == "__main__":
    sys.exit(main())
