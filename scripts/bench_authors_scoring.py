#!/usr/bin/env python
"""Scoring time per image of MOODCAT at the paper's size (the authors' released networks) on this machine.

Times what ``--pretrained`` scoring does per image, split into its parts, on random 32x32 images
with random weights of the exact paper-size networks (speed does not depend on the values):
the per-image mask draws (:class:`~moodcat_plugin.moodcat.mask_stream.MaskStream`), the
classifier (ResNet-18 32x32, for the predicted label of the deployable protocol), the generator
(encoder + BigGAN decoder, eval mode, spectral norms cached) and the Cb (with the authors'
``relu_shortcut``). Prints a Markdown snippet (command, machine, date, wall time) for the docs.
Example::

    python scripts/bench_authors_scoring.py --threads 1 2 --images 1024
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch
from torch.nn.utils import parametrize

from moodcat_plugin.moodcat.mask_stream import MaskStream
from moodcat_plugin.moodcat.masking import TEST_AREA
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32


def time_parts(images: int, batch: int, classes: int) -> dict:
    """Seconds per image of each scoring part (one warm-up batch not counted)."""
    gan = MoodcatGAN(classes).eval()
    cb = ConditionalBinaryClassifier(classes, relu_shortcut=True).eval()
    classifier = ResNet18_32x32(num_classes=classes).eval()
    stream = MaskStream(0, "random_rectangle", TEST_AREA)
    stream.start("bench", 0)
    totals = {"masks": 0.0, "classifier": 0.0, "generator": 0.0, "cb": 0.0}
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for step in range(images // batch + 1):
            started = time.perf_counter()
            masked = stream.masks(x)
            stream.advance(batch)
            t1 = time.perf_counter()
            y = classifier(x).argmax(dim=1)
            t2 = time.perf_counter()
            synthesis = gan.synthesize_from_masked(masked, y)
            t3 = time.perf_counter()
            with parametrize.cached():
                cb(x, synthesis, y)
            t4 = time.perf_counter()
            if step:  # the first batch warms up
                for name, seconds in zip(totals, (t1 - started, t2 - t1, t3 - t2, t4 - t3)):
                    totals[name] += seconds
    counted = (images // batch) * batch
    return {name: seconds / counted for name, seconds in totals.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=1024, help="images timed per thread count (default 1024)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (default 128, the eval batch)")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args(argv)
    started = time.time()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        parts = time_parts(args.images, args.batch, args.classes)
        total = sum(parts.values())
        rows.append(f"| {threads} | " + " | ".join(f"{1000 * parts[k]:.2f}" for k in parts)
                    + f" | {1000 * total:.2f} | {1 / total:.0f} | {total * 10000 / 60:.1f} |")
    print(f"`python scripts/bench_authors_scoring.py {' '.join(sys.argv[1:])}` -- {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, {datetime.date.today()}, wall "
          f"{time.time() - started:.0f} s; batch {args.batch}, {args.images} images per row, {args.classes} classes.\n")
    print("| threads | masks ms/img | classifier ms/img | generator ms/img | Cb ms/img | total ms/img | img/s | "
          "min per 10k images |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
