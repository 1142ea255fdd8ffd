"""``run_benchmark``: train what is missing, evaluate methods side by side, print the leaderboard."""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from moodcat_plugin.utils import run_guarded

EXAMPLES = """examples:
  python scripts/run_benchmark.py                                   # demo benchmark, every method
  python scripts/run_benchmark.py --postprocessor msp odin ebo      # demo, post-hoc baselines
  python scripts/run_benchmark.py --benchmark cifar10 --postprocessor moodcat msp odin ebo
  python scripts/run_benchmark.py --benchmark cifar10 --data-root ~/OpenOOD/data   # OpenOOD layout
  python scripts/run_benchmark.py --benchmark cifar10 --profile gpu --device cuda
  python scripts/run_benchmark.py -b cifar10 -p moodcat msp ebo --pretrained weights/moodcat_cifar10.pt
  python scripts/run_benchmark.py --postprocessor odin --set postprocessors.odin.postprocessor.APS_mode=false
  python scripts/run_benchmark.py --benchmark cifar10 --postprocessor msp \\
      --set network.width=1.0 --set network.checkpoint=/path/to/openood/best.ckpt
  python scripts/run_benchmark.py --list                            # what is registered
  torchrun --nproc_per_node=4 scripts/run_benchmark.py -b cifar10 -p moodcat msp --profile gpu   # 4 GPUs
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run_benchmark.py", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Evaluate OOD detectors (MOODCAT and baselines) side by side on one benchmark.")
    parser.add_argument("--postprocessor", "-p", nargs="+", default=["all"], metavar="NAME",
                        help="methods to run (config names under configs/postprocessors), or 'all' (default)")
    parser.add_argument("--benchmark", "-b", default="demo", help="benchmark config name (default: demo)")
    parser.add_argument("--profile", help="tiny, demo, cpu or gpu (default: the benchmark's default_profile)")
    parser.add_argument("--config", action="append", default=[], metavar="FILE", help="extra YAML merged on top")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one config value, e.g. trainer.num_epochs=5 (repeatable)")
    parser.add_argument("--data-root", help="npz data pack or OpenOOD data folder (default: ../shared/data)")
    parser.add_argument("--output-dir", help="where checkpoints, scores and leaderboards go (default: results)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="compute device (default: auto)")
    parser.add_argument("--seed", type=int, help="random seed (default: 0)")
    parser.add_argument("--fpr-convention", choices=["ood_positive", "id_positive"],
                        help="FPR@95 convention for the tables (default: ood_positive, as OpenOOD)")
    parser.add_argument("--pretrained", metavar="FILE",
                        help="MOODCAT: score with this shipped weights file (e.g. weights/moodcat_cifar10.pt, sha256 "
                             "checked) instead of training the generator and Cb")
    parser.add_argument("--config-root", type=Path, help="folder holding base.yml and the config folders")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--list", action="store_true", help="list benchmarks and registered methods, then exit")
    parser.add_argument("--verbose", "-v", action="store_true", help="log debug details")
    return parser.parse_args(argv)


def method_line(config_root: Path, name: str) -> str:
    """One line per method config: what it reads (needs), what it fits on or trains, and its title."""
    import sys

    from moodcat_plugin.pipeline import load_method_file
    from moodcat_plugin.registry import POSTPROCESSORS

    section = load_method_file(config_root, name)
    cls = POSTPROCESSORS.get(section["postprocessor"]["name"])
    trains = [section[key]["name"] for key in ("trainer", "gan", "cb") if isinstance(section.get(key), dict)]
    fit = f"trains: {', '.join(trains)}" if trains else f"fit: {cls.fits_on or '-'}"
    own_module = cls.__module__.endswith(f"{cls.registered_name}_postprocessor")
    doc = ((sys.modules[cls.__module__].__doc__ if own_module else cls.__doc__) or "?").strip().splitlines()[0]
    title = doc.split(": ")[0].split(" (")[0].rstrip(".")
    return f"  {name:<14} needs {cls.needs:<9} {fit:<33} {title}"


def list_registered(config_root: Path) -> str:
    from moodcat_plugin.pipeline import available
    from moodcat_plugin.registry import NETWORKS, POSTPROCESSORS, TRAINERS

    return "\n".join([
        f"benchmarks:      {', '.join(available(config_root, 'benchmarks'))}",
        "method configs (needs: logits / features = read the shared forward pass, forward = own passes):",
        *[method_line(config_root, name) for name in available(config_root, "postprocessors")],
        f"postprocessors:  {', '.join(POSTPROCESSORS.names())}",
        f"trainers:        {', '.join(TRAINERS.names())}",
        f"networks:        {', '.join(NETWORKS.names())}",
    ])


def run(args: argparse.Namespace) -> str:
    from moodcat_plugin import distributed
    from moodcat_plugin.pipeline import Runner, build_config, default_config_root, expand_methods, pretrained_flags

    config_root = args.config_root or default_config_root()
    if args.list:
        return list_registered(config_root)
    methods = expand_methods(args.postprocessor, config_root)
    flags = {"data_root": args.data_root, "output_dir": args.output_dir, "device": args.device, "seed": args.seed,
             "fpr_convention": args.fpr_convention, "progress": False if args.no_progress else None,
             "postprocessors": pretrained_flags(methods, args.pretrained, config_root) if args.pretrained else None}
    config = build_config(args.benchmark, methods, args.profile, args.config, args.overrides, flags, config_root)
    started = time.time()
    runner = Runner(config)
    log = logging.getLogger(__name__)
    processes = distributed.run_processes()
    log.info("benchmark %s, profile %s, device %s, %d CPU thread(s)%s; methods: %s", config.dataset.name,
             config.profile, config.device, runner.threads,
             f", {processes} processes (torchrun)" if processes > 1 else "", ", ".join(methods))
    if processes > 1:  # every process trains, then rank 0 alone scores (see moodcat_plugin/distributed.py)
        runner.check_distributed(methods)
        for number, method in enumerate(methods, start=1):
            log.info("[%d/%d] %s: train across %d processes what is not cached yet", number, len(methods), method,
                     processes)
            runner.train_method(method)
        distributed.finish()
        if not distributed.is_main():
            return ""
    for number, method in enumerate(methods, start=1):
        log.info("[%d/%d] %s: train what is not cached yet, then score every set", number, len(methods), method)
        runner.run_method(method)
        markdown = runner.leaderboard()  # rewritten after every method: an interrupted run keeps its rows
    outputs = runner.outputs(methods)
    width = max(len(what) for what, _ in outputs)
    return "\n".join([markdown, f"Outputs (profile {config.profile}, device {config.device}, "
                                 f"{time.time() - started:.0f} s):"]
                     + [f"  {what + ':':<{width + 1}} {where}" for what, where in outputs])


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_guarded(lambda: run(args), verbose=args.verbose)
