#!/usr/bin/env python
"""CPU speed of MOODCAT: scoring cost relative to ResNet-18 and GAN / Cb training throughput.

(a) "MOODCAT basic" scoring (mask -> encoder -> decoder -> Cb; reference sizes ch=32, Cb ch=64)
    versus one forward pass of resnet18_32x32 (width 1.0, 10 classes) on the same batch: median
    wall time over repeats after warm-up (eval mode, ``torch.inference_mode``), the time ratio
    MOODCAT/ResNet (the paper's MAC ratio is 0.408/0.556 = 0.73), and MACs counted with
    ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2). Variants: spectral-norm weights
    recomputed every layer call (plain) or cached once per batch (``parametrize.cached()``), and
    NCHW vs channels_last Cb / ResNet (MoodcatGAN's networks are always channels_last).
(b) GAN training images/s (one D step + one G step per batch, as the ``moodcat_gan`` trainer) at
    several channel multipliers, Cb training images/s, and scoring images/s at those sizes.

Prints a Markdown snippet (command, machine, date, tables). Example::

    python scripts/bench_moodcat_speed.py --threads 2 --batch 64 --gan-channels 8 16 32
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from moodcat_plugin.config import Config
from moodcat_plugin.moodcat.masking import TEST_AREA, apply_mask
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32
from moodcat_plugin.trainers.moodcat_cb_trainer import MoodcatCbTrainer
from moodcat_plugin.trainers.moodcat_gan_trainer import MoodcatGANTrainer

NUM_CLASSES = 10


def interleaved_medians(fns: dict, repeats: int, warmup: int = 2) -> dict:
    """{name: {'wall': s, 'cpu': s}} medians per callable, timed round-robin so that machine-load
    drift hits all alike. 'cpu' is process CPU time (all threads), unaffected by other processes."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    walls = {name: [] for name in fns}
    cpus = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            walls[name].append(time.perf_counter() - wall)
            cpus[name].append(time.process_time() - cpu)
    return {name: {"wall": statistics.median(walls[name]), "cpu": statistics.median(cpus[name])}
            for name in fns}


def count_macs(fn) -> float:
    """Multiply-accumulates of one call of ``fn`` (FlopCounterMode FLOPs / 2).

    FlopCounterMode registers autograd hooks, so ``fn`` must not use ``torch.inference_mode``
    (use ``no_grad``) nor ``parametrize.cached()``; the per-call spectral-norm matrix-vector
    products then counted are negligible (< 0.1 %).
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 2


def moodcat_scorer(gan: MoodcatGAN, cb: ConditionalBinaryClassifier, x, y, cache_sn: bool,
                   grad_mode=torch.inference_mode):
    """Callable computing the Cb logits of the MOODCAT basic pipeline on (x, y)."""
    generator = torch.Generator().manual_seed(0)

    def score():
        with grad_mode(), (parametrize.cached() if cache_sn else nullcontext()):
            masked = apply_mask(x, "random_rectangle", area=TEST_AREA, generator=generator)
            _, mu, _ = gan.encoder(masked)
            return cb(x, gan.decoder(mu, y), y)

    return score


def scoring_comparison(batch: int, repeats: int, ch: int = 32, cb_ch: int = 64) -> dict:
    """Times and MACs of MOODCAT basic vs resnet18_32x32 on one batch (see module doc)."""
    torch.manual_seed(0)
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    y = torch.arange(batch) % NUM_CLASSES
    gan = MoodcatGAN(NUM_CLASSES, ch=ch, disc_ch=32).eval()
    cb = ConditionalBinaryClassifier(NUM_CLASSES, ch=cb_ch).eval()
    resnet = ResNet18_32x32(NUM_CLASSES, width=1.0).eval()

    def resnet_forward(grad_mode=torch.inference_mode):
        with grad_mode():
            return resnet(x)

    resnet_cl = copy.deepcopy(resnet).to(memory_format=torch.channels_last)
    cb_cl = copy.deepcopy(cb).to(memory_format=torch.channels_last)

    def resnet_cl_forward():
        with torch.inference_mode():
            return resnet_cl(x)

    times = interleaved_medians({
        "resnet": resnet_forward, "resnet_cl": resnet_cl_forward,
        "moodcat_plain": moodcat_scorer(gan, cb, x, y, cache_sn=False),
        "moodcat_cached": moodcat_scorer(gan, cb_cl, x, y, cache_sn=True)}, repeats)
    with torch.no_grad():
        macs = {"resnet": count_macs(lambda: resnet_forward(torch.no_grad)) / batch,
                "moodcat": count_macs(moodcat_scorer(gan, cb, x, y, False, torch.no_grad)) / batch,
                "encoder": count_macs(lambda: gan.encoder(x)) / batch,
                "decoder": count_macs(lambda: gan.decoder(torch.zeros(batch, 128), y)) / batch,
                "cb": count_macs(lambda: cb(x, x, y)) / batch}
    return {"times": times, "macs": macs, "batch": batch}


def tiny_config(trainer: dict) -> Config:
    return Config({"device": "cpu", "dataset": {"normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}},
                   "trainer": trainer})


def gan_training_rate(ch: int, batch: int, steps: int) -> float:
    """Images/s of MoodcatGANTrainer.train_step (D + G step, CutMix with probability 0.5)."""
    torch.manual_seed(0)
    gan = MoodcatGAN(NUM_CLASSES, ch=ch, disc_ch=ch)
    trainer = MoodcatGANTrainer(gan, [None], tiny_config({"name": "moodcat_gan", "num_epochs": 1,
                                                           "cutmix_warmup_epochs": 0, "ema_decay": 0.999}))
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    y = torch.arange(batch) % NUM_CLASSES
    t = interleaved_medians({"step": lambda: trainer.train_step(x, y, epoch_idx=1)}, steps, warmup=1)["step"]
    return batch / t["wall"], batch / t["cpu"]


def cb_training_rate(gan_ch: int, cb_ch: int, batch: int, steps: int) -> float:
    """Labelled images/s of one Cb training step (each image gives a positive and a negative pair)."""
    torch.manual_seed(0)
    gan = MoodcatGAN(NUM_CLASSES, ch=gan_ch, disc_ch=gan_ch)
    cb = ConditionalBinaryClassifier(NUM_CLASSES, ch=cb_ch)
    images = torch.rand(batch, 3, 32, 32)
    loader = [{"data": (images - 0.5) / 0.5, "label": torch.arange(batch) % NUM_CLASSES}]
    trainer = MoodcatCbTrainer(cb, loader, tiny_config({"name": "moodcat_cb", "num_epochs": 1}), gan)
    t = interleaved_medians({"step": trainer.train_step}, steps, warmup=1)["step"]
    return batch / t["wall"], batch / t["cpu"]


def scoring_rate(gan_ch: int, cb_ch: int, batch: int, repeats: int) -> float:
    """Images/s of MOODCAT basic scoring (E + D + Cb, SN cached) at the given widths."""
    gan = MoodcatGAN(NUM_CLASSES, ch=gan_ch, disc_ch=gan_ch).eval()
    cb = ConditionalBinaryClassifier(NUM_CLASSES, ch=cb_ch).eval()
    x = torch.rand(batch, 3, 32, 32) * 2 - 1
    y = torch.arange(batch) % NUM_CLASSES
    t = interleaved_medians({"score": moodcat_scorer(gan, cb, x, y, cache_sn=True)}, repeats)["score"]
    return batch / t["wall"], batch / t["cpu"]


def machine_line(threads: int) -> str:
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} logical CPUs, torch {torch.__version__}, torch threads {threads}, "
            f"python {platform.python_version()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--gan-channels", type=int, nargs="*", default=[8, 16, 32])
    parser.add_argument("--cb-channels", type=int, nargs="*", default=[32, 64])
    parser.add_argument("--skip-scoring", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print("## MOODCAT CPU speed\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- machine: {machine_line(args.threads)}")
    print(f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print("- note: wall-clock medians; a shared or busy machine inflates absolute times, ratios are "
          "more robust (the scoring variants are timed round-robin)\n")

    if not args.skip_scoring:
        result = scoring_comparison(args.batch, args.repeats)
        t, m = result["times"], result["macs"]
        print(f"### (a) Scoring, batch {args.batch}, eval mode, inference_mode\n")
        print("| model | median wall s / batch | ratio (wall) | median CPU s / batch | ratio (CPU) | GMACs / image |")
        print("|---|---|---|---|---|---|")
        rows = [("resnet18_32x32 (width 1.0)", "resnet", m["resnet"]),
                ("resnet18_32x32, channels_last", "resnet_cl", m["resnet"]),
                ("MOODCAT basic (E+D+Cb), Cb NCHW, SN recomputed per call", "moodcat_plain", m["moodcat"]),
                ("MOODCAT basic (E+D+Cb), Cb channels_last, SN cached", "moodcat_cached", m["moodcat"])]
        for label, key, macs in rows:
            print(f"| {label} | {t[key]['wall']:.4f} | {t[key]['wall'] / t['resnet']['wall']:.2f} | "
                  f"{t[key]['cpu']:.4f} | {t[key]['cpu'] / t['resnet']['cpu']:.2f} | {macs / 1e9:.3f} |")
        print(f"\nMAC ratio MOODCAT/ResNet = {m['moodcat'] / m['resnet']:.2f} (paper: 0.73); per image "
              f"E {m['encoder'] / 1e9:.4f}, D {m['decoder'] / 1e9:.3f}, Cb {m['cb'] / 1e9:.3f} GMACs "
              f"(paper: 0.0049, 0.297, 0.105).\n")

    print(f"### (b) Training and scoring throughput, batch {args.batch} (images/s wall; images per CPU-second)\n")
    header = ["GAN ch (= disc ch)", "GAN train"]
    for c in args.cb_channels:
        header += [f"Cb ch {c} train", f"scoring E+D+Cb ch {c}"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    fmt = lambda rates: f"{rates[0]:.1f}; {rates[1]:.1f}"  # noqa: E731
    for ch in args.gan_channels:
        cells = [fmt(gan_training_rate(ch, args.batch, args.train_steps))]
        for cb_ch in args.cb_channels:
            cells.append(fmt(cb_training_rate(ch, cb_ch, args.batch, args.train_steps)))
            cells.append(fmt(scoring_rate(ch, cb_ch, args.batch, args.repeats)))
        print(f"| {ch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
