#!/usr/bin/env python
"""Import the authors' released MOODCAT weights (cure-lab/MOODCat) into this project's weights format.

Reads their encoder (``E_ep_<N>.pth``), generator (``G_ep_<N>.pth``; ``G_ema_*`` also imports and is
recorded as EMA) and optionally a Cb (``discriminator_cat6_*/acc=...pth``) WEIGHTS-ONLY, checks every
tensor's shape, converts the layouts (:mod:`moodcat_plugin.moodcat.authors_weights`, proven
output-equal to the authors' code by tests/test_authors_weights.py) and writes one fp32 weights
file whose ``MANIFEST.json`` entry records each source file's sha256 and what it is. Score it with
``--pretrained``. Bad files stop with one line naming the file and the fix; nothing is written then.

Examples::

    python scripts/import_moodcat_weights.py --benchmark cifar10 \\
        --encoder ckpt/cifar10_ind/E_ep_3999.pth --generator ckpt/cifar10_ind/G_ep_3999.pth \\
        --cb "ckpt/cifar10_ind/discriminator_cat6_checkpoints/acc=D-best-weights-step=6500acc=0.8583734035491943.pth" \\
        --out weights/authors/moodcat_cifar10_authors.pt
    python scripts/import_moodcat_weights.py --benchmark cifar100 \\
        --encoder ckpt/cifar100_ind/E_ep_3507.pth --generator ckpt/cifar100_ind/G_ep_3507.pth \\
        --cb "ckpt/cifar100_ind/discriminator_cat6_ckpt_cifar100/acc=D-best-weights-step=7930acc=0.8181423544883728.pth" \\
        --out weights/authors/moodcat_cifar100_authors.pt
"""
from __future__ import annotations

import argparse
import json
import sys

from moodcat_plugin.config import load_yaml
from moodcat_plugin.moodcat.authors_weights import import_authors_weights
from moodcat_plugin.pipeline import _named_file, default_config_root
from moodcat_plugin.utils import key_value_notes, run_guarded


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("Examples::")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, help="benchmark the weights are for (cifar10, cifar100, "
                                                           "cifar10_scood, ...): gives the class count")
    parser.add_argument("--encoder", required=True, help="the authors' E_ep_<N>.pth")
    parser.add_argument("--generator", required=True, help="the authors' G_ep_<N>.pth (non-EMA, as evaluated)")
    parser.add_argument("--cb", help="the authors' Cb file (discriminator_cat6_*/acc=...pth); without it a Cb is "
                                     "trained on the imported generator when scoring")
    parser.add_argument("--out", required=True, help="weights file to write, e.g. weights/authors/moodcat_cifar10_authors.pt")
    parser.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                        help="extra provenance for the manifest (repeatable)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def import_files() -> str:
        notes = key_value_notes(args.note)
        classes = int(load_yaml(_named_file(default_config_root(), "benchmarks", args.benchmark))["num_classes"])
        entry = import_authors_weights(args.benchmark, classes, args.encoder, args.generator, args.out, cb=args.cb,
                                       notes=notes)
        return json.dumps({args.out: entry}, indent=2, default=str)

    return run_guarded(import_files)


if __name__ == "__main__":
    sys.exit(main())
