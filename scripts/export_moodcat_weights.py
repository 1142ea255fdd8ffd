#!/usr/bin/env python
"""Write a shipped MOODCAT weights file (fp16 encoder + decoder [+ Cb]) and record it in MANIFEST.json.

The inputs are run folders under ``checkpoints/`` (``<benchmark>-moodcat_gan-<hash>``: its
``final.ckpt``, or ``last.ckpt`` of an unfinished run; ``<benchmark>-moodcat_cb-<hash>``: the Cb
trained on that generator). The file goes where ``--out`` says; ``MANIFEST.json`` in the same
folder gets its sha256, size and provenance (benchmark, steps, images seen, training seconds, Cb
validation accuracy, configs, the commit of this checkout, and every ``--note``). Load it with
``python scripts/run_benchmark.py -b cifar10 -p moodcat msp --pretrained weights/moodcat_cifar10.pt``.

Examples::

    python scripts/export_moodcat_weights.py --gan results/checkpoints/cifar10-moodcat_gan-0123abcd4567 \\
        --cb auto --out weights/moodcat_cifar10.pt --note trained_with_commit=abc1234 --note device="2 CPU cores"
    python scripts/export_moodcat_weights.py --gan results/checkpoints/cifar10-moodcat_gan-0123abcd4567 \\
        --out snapshots/gan_step_20000.pt     # generator only (a Cb is then trained on it when scoring)
"""
from __future__ import annotations

import argparse
import json
import sys

from moodcat_plugin.moodcat.weights import export_weights, find_cb_run
from moodcat_plugin.utils import key_value_notes, run_guarded


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("Examples::")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gan", required=True, help="generator run folder (or a weights file to add a Cb to)")
    parser.add_argument("--cb", help="Cb run folder trained on that generator, or 'auto' to find it (beside a --gan "
                                     "run folder, else in --checkpoints)")
    parser.add_argument("--checkpoints", help="where --cb auto looks for a weights-file --gan (default results/checkpoints)")
    parser.add_argument("--out", required=True, help="weights file to write, e.g. weights/moodcat_cifar10.pt")
    parser.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                        help="extra provenance for the manifest, e.g. trained_with_commit=abc1234 (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def export() -> str:
        notes = key_value_notes(args.note)
        cb = find_cb_run(args.gan, args.checkpoints) if args.cb == "auto" else args.cb
        return json.dumps({args.out: export_weights(args.gan, args.out, cb=cb, notes=notes)}, indent=2, default=str)

    return run_guarded(export)


if __name__ == "__main__":
    sys.exit(main())
