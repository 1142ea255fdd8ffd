#!/usr/bin/env python
"""MOODCAT speed on one device: GAN / Cb training and scoring images/s, and the paper's schedule.

(a) Training and scoring throughput at two sizes: the paper's (GAN ch 32 with U-Net discriminator
    ch 32, latent 128; Cb ch 64) and the ``cpu`` profile's (GAN ch 16 / 16, latent 128; Cb ch 32).
    GAN: images/s of ``MoodcatGANTrainer`` steps (one D + one G update, CutMix with probability
    0.5, decoder EMA) fed by the normal training stream (``ShuffledBatches`` resident on the
    device, flips made there). Cb: labelled images/s of ``MoodcatCbTrainer`` steps (each image
    gives a matched and a mismatched pair through the frozen generator). Scoring: images/s of
    MOODCAT basic (mask, encoder, decoder, Cb; eval mode, spectral norms cached). Each training
    rate is measured with the speed options at their defaults (the original arithmetic) and with
    the ``gpu`` profile's options (``configs/postprocessors/moodcat.yml``: concatenated
    discriminator forward, fused Adam, bf16 autocast); ``fast-fp32`` is the same without autocast
    (CPUs without bf16 units emulate it slowly). The paper's schedule (520k steps x 384 images)
    is converted into GPU-hours (CUDA) or CPU-days (CPU) at each GAN rate.
(b) (``--curves N``) loss curves of N GAN steps with each variant from the same seed, data
    (the embedded demo digits, always available), masks and CutMix draws, in windows of N/4 steps:
    the speed options must not change what is learnt beyond rounding.
(c) (``--compare-resnet``) scoring cost of MOODCAT basic at paper size against one forward pass
    of resnet18_32x32 on the same batch: wall and CPU time ratios and MACs
    (``torch.utils.flop_counter``).

Nothing names a device but ``--device``. Prints a Markdown snippet (command, machine, date, wall
time, tables) for BENCHMARKS.md. Examples::

    python scripts/bench_moodcat_speed.py --device cpu --threads 2            # batch 64
    python scripts/bench_moodcat_speed.py --device cuda                       # batch 384
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from moodcat_plugin.config import Config, ConfigError, load_yaml
from moodcat_plugin.data import ImageArray, make_loader
from moodcat_plugin.moodcat.masking import TEST_AREA, apply_mask
from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
from moodcat_plugin.networks.moodcat_gan import MoodcatGAN
from moodcat_plugin.networks.resnet18_32x32 import ResNet18_32x32
from moodcat_plugin.trainers.moodcat_cb_trainer import MoodcatCbTrainer
from moodcat_plugin.trainers.moodcat_gan_trainer import GAN_SPEED_DEFAULTS, MoodcatGANTrainer
from moodcat_plugin.utils import resolve_device

NUM_CLASSES = 10
IMAGES = 4096                       # synthetic training set resident on the device
PAPER_STEPS, PAPER_BATCH = 520_000, 384
SIZES = {"paper": {"gan": 32, "disc": 32, "latent": 128, "cb": 64},
         "cpu": {"gan": 16, "disc": 16, "latent": 128, "cb": 32}}
MOODCAT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "postprocessors" / "moodcat.yml"


def gpu_profile_options(section: str) -> dict:
    """The speed options the ``gpu`` profile of moodcat.yml sets in its ``gan``/``cb`` section."""
    profile = load_yaml(MOODCAT_CONFIG)["profiles"]["gpu"].get(section, {})
    return {key: value for key, value in profile.items() if key in GAN_SPEED_DEFAULTS}


def variant_options(variant: str, section: str) -> dict:
    if variant == "default":
        return {}
    options = gpu_profile_options(section)
    return {**options, "amp": "off"} if variant == "fast-fp32" else options


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int) -> dict:
    """Wall and process-CPU seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return {"wall": (time.perf_counter() - wall) / repeats, "cpu": (time.process_time() - cpu) / repeats}


def training_stream(batch: int, device: torch.device, seed: int = 0):
    """The normal training stream (flips) over random uint8 images resident on ``device``."""
    rng = np.random.default_rng(seed)
    array = ImageArray("bench", rng.integers(0, 256, (IMAGES, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, NUM_CLASSES, IMAGES))
    return make_loader(array, [0.5] * 3, [0.5] * 3, batch, train=True, augment=["flip"], seed=seed, device=device)


def trainer_config(section: dict, device: torch.device) -> Config:
    return Config({"device": str(device), "progress": False,
                   "dataset": {"normalization": {"mean": [0.5] * 3, "std": [0.5] * 3}}, "trainer": section})


def gan_rate(size: dict, batch: int, device: torch.device, options: dict, steps: int, warmup: int) -> dict:
    """Images/s (wall, per CPU-second) of GAN training steps."""
    torch.manual_seed(0)
    gan = MoodcatGAN(NUM_CLASSES, ch=size["gan"], latent_dim=size["latent"], disc_ch=size["disc"]).to(device)
    section = {"name": "moodcat_gan", "num_epochs": 1, "batch_size": batch, "cutmix_warmup_epochs": 0,
               "ema_decay": 0.9999, "sample_every": 0, "log_every": 0, **options}
    trainer = MoodcatGANTrainer(gan, training_stream(batch, device), trainer_config(section, device))
    t = timed(lambda: trainer.train_step(*trainer.next_batch(), epoch_idx=1), device, steps, warmup)
    return {"wall": batch / t["wall"], "cpu": batch / t["cpu"]}


def cb_rate(size: dict, batch: int, device: torch.device, options: dict, steps: int, warmup: int) -> dict:
    """Labelled images/s of Cb training steps (two pairs per image through the frozen generator)."""
    torch.manual_seed(0)
    gan = MoodcatGAN(NUM_CLASSES, ch=size["gan"], latent_dim=size["latent"], disc_ch=size["disc"]).to(device)
    cb = ConditionalBinaryClassifier(NUM_CLASSES, ch=size["cb"]).to(device)
    section = {"name": "moodcat_cb", "num_epochs": 1, "batch_size": batch, **options}
    trainer = MoodcatCbTrainer(cb, training_stream(batch, device, seed=1), trainer_config(section, device), gan)
    t = timed(trainer.train_step, device, steps, warmup)
    return {"wall": batch / t["wall"], "cpu": batch / t["cpu"]}


def moodcat_scorer(gan, cb, x, y, cache_sn: bool = True, grad_mode=torch.inference_mode):
    """Callable computing the Cb logits of MOODCAT basic (mask, E, D, Cb) on (x, y)."""
    generator = torch.Generator(device=x.device).manual_seed(0)

    def score():
        with grad_mode(), (parametrize.cached() if cache_sn else nullcontext()):
            masked = apply_mask(x, "random_rectangle", area=TEST_AREA, generator=generator)
            _, mu, _ = gan.encoder(masked)
            return cb(x, gan.decoder(mu, y), y)

    return score


def scoring_rate(size: dict, batch: int, device: torch.device, repeats: int, warmup: int) -> dict:
    gan = MoodcatGAN(NUM_CLASSES, ch=size["gan"], latent_dim=size["latent"], disc_ch=size["disc"]).to(device).eval()
    cb = ConditionalBinaryClassifier(NUM_CLASSES, ch=size["cb"]).to(device).to(memory_format=torch.channels_last).eval()
    x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    y = torch.arange(batch, device=device) % NUM_CLASSES
    t = timed(moodcat_scorer(gan, cb, x, y), device, repeats, warmup)
    return {"wall": batch / t["wall"], "cpu": batch / t["cpu"]}


def loss_curve(size: dict, batch: int, device: torch.device, options: dict, steps: int) -> torch.Tensor:
    """(steps, 2) d_loss, g_loss of GAN training on the demo digits from seed 0."""
    from moodcat_plugin.data.demo import build_demo_sets

    torch.manual_seed(0)
    digits = build_demo_sets(0)["digits_train"]
    gan = MoodcatGAN(6, ch=size["gan"], latent_dim=size["latent"], disc_ch=size["disc"]).to(device)
    section = {"name": "moodcat_gan", "num_epochs": 1, "batch_size": batch, "lr_g": 2e-4, "cutmix_warmup_epochs": 0,
               "ema_decay": None, "sample_every": 0, "log_every": 0, **options}
    stream = make_loader(digits, [0.5] * 3, [0.5] * 3, batch, train=True, augment=["flip"], seed=0, device=device)
    trainer = MoodcatGANTrainer(gan, stream, trainer_config(section, device))
    rows = [trainer.train_step(*trainer.next_batch(), epoch_idx=1) for _ in range(steps)]
    return torch.tensor([[row["d_loss"], row["g_loss"]] for row in rows])


def curves_table(size_name: str, batch: int, device: torch.device, variants, steps: int) -> str:
    """Markdown: mean d/g loss per window of steps for each variant, and the largest per-step
    relative difference from the default."""
    curves = {variant: loss_curve(SIZES[size_name], batch, device, variant_options(variant, "gan"), steps)
              for variant in ["default", *[v for v in variants if v != "default"]]}
    window = max(1, steps // 4)
    edges = list(range(0, steps, window))
    header = ["options"] + [f"steps {a + 1}-{min(a + window, steps)}: d / g" for a in edges] + ["max per-step rel. diff d / g"]
    lines = [f"Loss curves, {size_name} size, batch {batch}, {steps} steps on the demo digits (same seed, data and draws):\n",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, curve in curves.items():
        means = [curve[a:a + window].mean(0) for a in edges]
        diff = ((curve - curves["default"]).abs() / curves["default"].abs()).max(0).values
        lines.append(f"| {variant} | " + " | ".join(f"{m[0]:.4f} / {m[1]:.3f}" for m in means)
                     + f" | {diff[0]:.2%} / {diff[1]:.2%} |")
    return "\n".join(lines)


def schedule(rate: dict, device: torch.device) -> str:
    """The paper's GAN schedule at the wall ``rate`` in GPU-hours, or on CPU in days (wall; in
    brackets at the process-CPU-time rate, i.e. on dedicated cores)."""
    images = PAPER_STEPS * PAPER_BATCH
    if device.type == "cuda":
        return f"{images / rate['wall'] / 3600:.1f} GPU-h"
    return f"{images / rate['wall'] / 86400:,.0f} days ({images / rate['cpu'] / 86400:,.0f})"


def count_macs(fn) -> float:
    """Multiply-accumulates of one call of ``fn`` (FlopCounterMode FLOPs / 2; no_grad, SN uncached)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 2


def resnet_comparison(batch: int, device: torch.device, repeats: int) -> str:
    """Markdown rows: MOODCAT basic at paper size against resnet18_32x32 on one batch."""
    torch.manual_seed(0)
    size = SIZES["paper"]
    x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1
    y = torch.arange(batch, device=device) % NUM_CLASSES
    gan = MoodcatGAN(NUM_CLASSES, ch=size["gan"], disc_ch=size["disc"]).to(device).eval()
    cb = ConditionalBinaryClassifier(NUM_CLASSES, ch=size["cb"]).to(device).to(memory_format=torch.channels_last).eval()
    resnet = ResNet18_32x32(NUM_CLASSES, width=1.0).to(device).eval()

    def resnet_forward(grad_mode=torch.inference_mode):
        with grad_mode():
            return resnet(x)

    times = {"resnet": timed(resnet_forward, device, repeats, 2),
             "moodcat": timed(moodcat_scorer(gan, cb, x, y), device, repeats, 2)}
    macs = {"resnet": count_macs(lambda: resnet_forward(torch.no_grad)) / batch,
            "moodcat": count_macs(moodcat_scorer(gan, cb, x, y, False, torch.no_grad)) / batch}
    lines = [f"Scoring cost, batch {batch}, eval mode, inference_mode:\n",
             "| model | wall s / batch | ratio (wall) | CPU s / batch | ratio (CPU) | GMACs / image |",
             "|---|---|---|---|---|---|"]
    for label, key in (("resnet18_32x32 (width 1.0)", "resnet"),
                       ("MOODCAT basic (E+D+Cb, ch 32 / Cb 64), SN cached", "moodcat")):
        t = times[key]
        lines.append(f"| {label} | {t['wall']:.4f} | {t['wall'] / times['resnet']['wall']:.2f} | {t['cpu']:.4f} | "
                     f"{t['cpu'] / times['resnet']['cpu']:.2f} | {macs[key] / 1e9:.3f} |")
    return "\n".join(lines)


def cpu_name() -> str:
    """The processor's model name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device, threads: int) -> str:
    what = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {threads}")
    return f"{what}; {platform.platform()}, torch {torch.__version__}, python {platform.python_version()}"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 would silently mean 'the default' below)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--batch", type=positive_int, help="batch size (default: 384 on CUDA, as the paper; 64 on CPU)")
    parser.add_argument("--steps", type=positive_int,
                        help="timed training steps per rate (default: 30 on CUDA, 3 on CPU)")
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--variants", nargs="+", choices=["default", "fast", "fast-fp32"],
                        help="speed options measured (default: default fast on CUDA, default fast-fp32 on CPU)")
    parser.add_argument("--curves", type=int, default=0, metavar="N",
                        help="also compare N-step GAN loss curves of the variants (cpu size)")
    parser.add_argument("--only-curves", action="store_true", help="skip the throughput table")
    parser.add_argument("--compare-resnet", action="store_true", help="also time MOODCAT scoring against ResNet-18")
    args = parser.parse_args(argv)
    try:
        args.device = resolve_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    device = args.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed 32x32 shapes: let cuDNN pick its fastest kernels
    torch.set_num_threads(args.threads)
    batch = args.batch or (PAPER_BATCH if cuda else 64)
    steps = args.steps or (30 if cuda else 3)
    warmup = 10 if cuda else 1
    variants = args.variants or (["default", "fast"] if cuda else ["default", "fast-fp32"])

    print(f"## MOODCAT speed on {'CUDA' if cuda else 'CPU'}\n")
    print(f"- command: `python {' '.join(sys.argv)}`")
    print(f"- machine: {machine_line(device, args.threads)}")
    print(f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"- batch {batch}; {steps} timed training steps after {warmup} warm-up step(s) per rate; "
          f"fast options (gpu profile): gan {gpu_profile_options('gan')}, cb {gpu_profile_options('cb')}\n")
    print("Images/s, wall clock (in brackets: images per CPU-second of this process). Paper schedule: "
          f"{PAPER_STEPS:,} GAN steps x {PAPER_BATCH} images at the GAN rate.\n")
    header = ["size", "options", "GAN train", "paper schedule", "Cb train", "scoring E+D+Cb"]
    if not args.only_curves:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    number = lambda x: f"{x:,.0f}" if x >= 100 else f"{x:.3g}"  # noqa: E731
    fmt = lambda rate: f"{number(rate['wall'])} ({number(rate['cpu'])})"  # noqa: E731
    for name in [] if args.only_curves else args.sizes:
        size = SIZES[name]
        scoring = fmt(scoring_rate(size, batch, device, max(steps, 5), warmup))
        label = f"{name}: GAN ch {size['gan']} / D {size['disc']}, Cb {size['cb']}"
        for variant in variants:
            gan = gan_rate(size, batch, device, variant_options(variant, "gan"), steps, warmup)
            cb = cb_rate(size, batch, device, variant_options(variant, "cb"), steps, warmup)
            print(f"| {label} | {variant} | {fmt(gan)} | {schedule(gan, device)} | {fmt(cb)} | {scoring} |",
                  flush=True)
            if cuda:
                torch.cuda.empty_cache()
    if args.curves:
        print("\n" + curves_table("cpu", 32 if not cuda else batch, device, variants, args.curves))
    if args.compare_resnet:
        print("\n" + resnet_comparison(batch, device, max(steps, 5)))
    print(f"\nwall time of this benchmark: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
