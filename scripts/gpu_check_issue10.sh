#!/usr/bin/env bash
# Issue 10 on a lent GPU, as ONE device command of under 10 minutes (a 15-minute lease holds the
# machine's start too): the speed benchmark on CUDA, then the paper-size MOODCAT generator (gpu
# profile: ch 32, U-Net D ch 32, batch 384, speed options on) trained on CIFAR-10 for GAN_SECONDS,
# with a generator snapshot (fp16 encoder + decoder, ~9 MB) exported at 1/3, 2/3 and the end.
#
# 1. Here, on the CPU machine, once (no device time; pip only downloads, the device has no index):
#      bash scripts/gpu_check_issue10.sh prepare
#    -> .whl/    wheels the device lacks (piq, which the GAN's SSIM loss imports; lpips, for IQA
#                scoring later; pydantic and its parts, for the config schemas), for CPython 3.12
#    -> devdata/ cifar10_train20k.npz from ../shared/data (54 MB; only the training set travels:
#                the 64 MiB limit on tree + carry leaves no room for the test sets). When shipped
#                weights files (~9 MB each) make the tree too big, keep fewer images per class:
#                TRAIN_IMAGES=15000 bash scripts/gpu_check_issue10.sh prepare (recorded in the snapshots)
#    Both folders are git-ignored; they travel only when named in carry.
# 2. On the device: run(command="bash scripts/gpu_check_issue10.sh", carry=[".whl", "devdata"], timeout_s=600)
#    $OUT gets (8 files at most come back): bench.md, log.txt, gan_<images seen>.pt x 3, MANIFEST.json
#    (their sha256 and provenance: steps, images seen, GPU seconds), losses.csv, samples.png.
# 3. Back here, score each snapshot on CPU (trains the cpu-profile Cb on that generator, then scores):
#      mkdir -p weights/gpu && cp /work/.device/.../{gan_*.pt,MANIFEST.json} weights/gpu/
#      python scripts/run_benchmark.py -b cifar10 -p moodcat msp ebo --pretrained weights/gpu/gan_<N>.pt \
#          --set 'postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]'
#    and ship the last with the Cb trained on it: python scripts/export_moodcat_weights.py \
#          --gan weights/gpu/gan_<N>.pt --cb auto --out weights/moodcat_cifar10.pt   (Cb found in results/checkpoints)
#
# Knobs (environment): GAN_SECONDS (default 360), BENCH (1; 0 skips the benchmark), FAST (1; 0 trains
# with the speed options off), DEVICE (cuda), PROFILE (gpu), DATA (devdata), OUT (/tmp/gpu_out without the tool),
# RUN_DIR (/tmp/moodcat_gpu_check: the run's checkpoints, outside $OUT).
# A dry run on CPU: DEVICE=cpu PROFILE=tiny BENCH=0 GAN_SECONDS=20 DATA=../shared/data bash scripts/gpu_check_issue10.sh
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
  mkdir -p .whl devdata
  pip_download() {
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "$@"
  }
  # the versions this project is tested with (pip list of its venv); pure-Python wheels except pydantic_core
  pip_download piq==0.8.0 lpips==0.1.4 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
    typing-inspection==0.4.5 typing_extensions==4.16.0 || exit 1
  if [ -z "${TRAIN_IMAGES:-}" ]; then
    cp -v ../shared/data/cifar10_train20k.npz devdata/ || exit 1
  else  # the first TRAIN_IMAGES/10 images of each class
    python3 -c "import numpy as np, sys; d = np.load('../shared/data/cifar10_train20k.npz'); n = int(sys.argv[1]) // 10
keep = np.sort(np.concatenate([np.flatnonzero(d['labels'] == c)[:n] for c in range(10)]))
np.savez('devdata/cifar10_train20k.npz', images=d['images'][keep], labels=d['labels'][keep])" "$TRAIN_IMAGES" || exit 1
  fi
  du -sh .whl devdata
  exit 0
fi

OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD"
if ! python3 -c "import piq, lpips, pydantic" 2> /dev/null; then  # the device: install the carried wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" || { echo "installing the wheels of .whl/ failed: run 'prepare' here first"; exit 1; }
fi
DEVICE=${DEVICE:-cuda}
date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "${BENCH:-1}" = "1" ]; then
  timeout 120 python3 scripts/bench_moodcat_speed.py --device "$DEVICE" --steps 20 > "$OUT/bench.md" \
    || echo "benchmark failed or ran past 120 s (see bench.md); training anyway"
  cat "$OUT/bench.md"
fi

GAN_SECONDS=${GAN_SECONDS:-360} PROFILE=${PROFILE:-gpu} DATA=${DATA:-devdata} FAST=${FAST:-1} DEVICE=$DEVICE OUT=$OUT \
python3 - <<'PY'
"""Time-boxed generator training on CIFAR-10's training set with snapshots (see the header)."""
import os, shutil, time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from moodcat_plugin.data import ImageArray
from moodcat_plugin.moodcat.weights import export_weights
from moodcat_plugin.pipeline import build_config, method_config
from moodcat_plugin.postprocessors.moodcat_postprocessor import MoodcatPostprocessor
from moodcat_plugin.training import fit, run_folder
from moodcat_plugin.utils import resolve_device

seconds, out, device = float(os.environ["GAN_SECONDS"]), Path(os.environ["OUT"]), resolve_device(os.environ["DEVICE"])
torch.backends.cudnn.benchmark = True
# epochs of 200 steps (a snapshot lands at most one epoch after its time; last.ckpt is written every
# epoch); the paper's 520k steps and CutMix warm-up (26k steps) kept in steps
overrides = ["postprocessors.moodcat.postprocessor.postprocessor_args.scorers=[cb]"]
if os.environ["PROFILE"] == "gpu":
    overrides += ["postprocessors.moodcat.gan.steps_per_epoch=200", "postprocessors.moodcat.gan.num_epochs=2600",
                  "postprocessors.moodcat.gan.cutmix_warmup_epochs=130"]
if os.environ["FAST"] != "1":
    overrides += [f"postprocessors.moodcat.gan.{key}={value}"
                  for key, value in (("concat_d_forward", "false"), ("amp", "off"), ("fused_optimizer", "false"))]
config = build_config("cifar10", ["moodcat"], os.environ["PROFILE"], overrides=overrides,
                      flags={"device": str(device), "output_dir": os.environ.get("RUN_DIR", "/tmp/moodcat_gpu_check"),
                             "progress": False})
cfg = method_config(config, "moodcat")
data = np.load(Path(os.environ["DATA"]) / "cifar10_train20k.npz")
post = MoodcatPostprocessor(cfg)
post.benchmark = SimpleNamespace(id={"train": ImageArray("cifar10_train20k", data["images"], data["labels"])},
                                 mean=list(cfg.dataset.normalization.mean), std=list(cfg.dataset.normalization.std))
gan, trainer, key = post.gan_trainer(None, {})
folder = run_folder(cfg, "cifar10-moodcat_gan", key)
print("gan section:", dict(cfg.gan), "\nrun folder:", folder, flush=True)
started = time.perf_counter()
for third in range(3):  # three time-boxed calls, a snapshot after each (each resumes from last.ckpt)
    result = fit(trainer, folder, progress=False, key=key, stop_after_seconds=seconds / 3)
    elapsed, last, images = time.perf_counter() - started, result["history"][-1], trainer.step * cfg.gan.batch_size
    entry = export_weights(folder, out / f"gan_{images}.pt", notes={
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "data": f"cifar10_train20k ({len(data['labels'])} CIFAR-10 training images)",
        "wall_seconds_since_start": round(elapsed)})
    print(f"{elapsed:6.0f} s: step {trainer.step}, {images} images, {len(result['history'])} epochs, g_loss "
          f"{last['g_loss']:.3f}, d_loss {last['d_loss']:.3f}, {last['seconds']:.1f} s per epoch; snapshot "
          f"gan_{images}.pt {entry['bytes'] / 1e6:.1f} MB, GAN seconds {entry['gan_seconds']}", flush=True)
    if not result.get("interrupted"):
        break
for name, target in (("losses.csv", "losses.csv"),):
    if (folder / name).is_file():
        shutil.copy(folder / name, out / target)
samples = sorted((folder / "samples").glob("step_*.png"))
if samples:
    shutil.copy(samples[-1], out / "samples.png")
PY
echo "exit $?"; date; ls -la "$OUT"
