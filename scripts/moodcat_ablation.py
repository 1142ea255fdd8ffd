#!/usr/bin/env python
"""MOODCAT ablation under the deployable protocol: one table of variants on one classifier.

Variants come from a YAML file (default ``configs/ablations/moodcat_deployable.yml``): each is
a method file plus ``--set``-style overrides (the file's ``common`` ones first). For each variant this trains what is not cached
(generator, Cb; variants that keep the generator share it), scores every set with the labels
the classifier predicts, and measures on ID val what the variant actually uses
(:mod:`moodcat_plugin.moodcat.diagnostics`). Writes ``<output>/ablation/<benchmark>/``:
per-variant scores (a normal leaderboard, ``leaderboard.md``) and ``ablation.{md,json}``, the
table of issue 8: Cb val accuracy, accuracy with x' shuffled, label effect on x', near/far AUROC
and FPR@95, training time.

    python scripts/moodcat_ablation.py -b cifar10 --profile cpu --output-dir results
    python scripts/moodcat_ablation.py -b cifar10 --stage train     # classifier-free parts only

``--stage train`` trains the generators and Cbs that do not need the classifier (so they can
train while the classifier does, in another process); ``all`` (default) runs everything.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from moodcat_plugin.config import check_plain_name, load_yaml
from moodcat_plugin.errors import UserError
from moodcat_plugin.evaluation.leaderboard import collect_rows, table_columns, table_values
from moodcat_plugin.evaluation.metrics import ood_metrics
from moodcat_plugin.data import make_loader
from moodcat_plugin.moodcat.diagnostics import label_effect, method_shuffle_drop, pair_accuracy
from moodcat_plugin.pipeline import Runner, build_config, default_config_root, method_config, pretrained_flags
from moodcat_plugin.registry import POSTPROCESSORS
from moodcat_plugin.utils import atomic_write_json, atomic_write_text, run_guarded

log = logging.getLogger("moodcat_ablation")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", "-b", default="cifar10")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--ablation", type=Path, default=default_config_root() / "ablations" / "moodcat_deployable.yml")
    parser.add_argument("--variants", nargs="+", help="names to run (default: all in the file)")
    parser.add_argument("--stage", choices=["train", "all", "table"], default="all",
                        help="train: train what the variants need; all: train and score; table: only write "
                             "the table from the variants scored so far")
    parser.add_argument("--output-dir", type=Path, default=Path("results"))
    parser.add_argument("--pretrained", help="score with this shipped weights file (e.g. weights/moodcat_cifar10.pt) "
                                             "instead of training the generator; parts it lacks are trained on it")
    parser.add_argument("--data-root")
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="global override")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def variant_overrides(method: str, settings: dict) -> list:
    return [f"postprocessors.{method}.{key}={json.dumps(value)}" for key, value in (settings or {}).items()]


def variant_config(args, variant: dict, spec: dict):
    method = variant.get("method", spec["method"])
    flags = {"output_dir": str(args.output_dir / "ablation"), "checkpoint_dir": str(args.output_dir / "checkpoints"),
             "data_root": args.data_root, "device": args.device, "progress": False if args.no_progress else None,
             "postprocessors": (pretrained_flags([method], args.pretrained, default_config_root())
                                if args.pretrained else None)}
    settings = {**(spec.get("common") or {}), **(variant.get("set") or {})}
    overrides = list(args.overrides) + variant_overrides(method, settings)
    return method, build_config(args.benchmark, [method], args.profile, overrides=overrides, flags=flags)


def training_seconds(post) -> float:
    total = 0.0
    for info in post.training_info.values():
        if "folder" not in info:  # loaded from a shipped weights file: trained elsewhere, no history here
            continue
        history = Path(info["folder"]) / "history.json"
        if history.is_file():
            total += sum(epoch.get("seconds", 0.0) for epoch in json.loads(history.read_text()))
    return total


def diagnostics(runner, post) -> dict:
    """Cb pair accuracy (plain and with x' shuffled) and the label effect, on ID val."""
    bench, cb_cfg = runner.benchmark, post.config.cb
    val = runner.evaluator.id_loader_dict["val"]
    common = dict(mask_style=cb_cfg.mask_style, area=cb_cfg.train_area, device=post.device)
    effect = label_effect(post.gan, val, bench.mean, bench.std, bench.num_classes, **common)
    if "cb" not in post.scorer_modules:  # a variant without Cb (e.g. classifier_lpips alone)
        return {"cb_val_acc": None, "cb_val_acc_shuffled": None, **effect}
    cb = post.scorer_modules["cb"].classifier
    return {
        "cb_val_acc": pair_accuracy(cb, post.gan, val, bench.mean, bench.std, bench.num_classes, **common),
        "cb_val_acc_shuffled": pair_accuracy(cb, post.gan, val, bench.mean, bench.std, bench.num_classes,
                                             shuffle_synthesis=True, **common),
        **effect,
    }


def validation_shuffle_drop(runner, post, net) -> dict:
    """Val AUROC (ID val against TIN val and, where declared, the far-OOD validation set; mean) with
    the method's own syntheses and with every x' taken from another image (issue 27)."""
    evaluator, bench = runner.evaluator, runner.benchmark
    ood = {"ood_val": evaluator.ood_loader_dict["val"]}
    if bench.ood_val_far is not None:
        ood["ood_val_far"] = make_loader(bench.ood_val_far, bench.mean, bench.std,
                                         int(runner.config.get("eval_batch_size", 256)), device=post.device)
    result = method_shuffle_drop(post, net, evaluator.id_loader_dict["val"], ood)
    return {"val_auroc_with_far": result["auroc"], "shuffle_drop": result["drop"]}


def validation_auroc(runner, post, net) -> float:
    """AUROC of ID val against OOD val (the only OOD data a selection may look at)."""
    evaluator = runner.evaluator
    id_conf = evaluator.score(post, net, evaluator.id_loader_dict["val"]).conf
    return ood_metrics(id_conf, evaluator.score(post, net, evaluator.ood_loader_dict["val"]).conf)["AUROC"]


def run_variant(args, variant: dict, spec: dict) -> dict:
    method, config = variant_config(args, variant, spec)
    runner = Runner(config)
    cfg = method_config(config, method)
    if args.stage == "train":
        post = POSTPROCESSORS.get(cfg.postprocessor.name)(cfg)
        post.benchmark = runner.benchmark
        if post.training_needs_classifier():
            log.info("%s: needs the classifier, left for --stage all", variant["name"])
            return {}
        post.train(None, runner.evaluator.id_loader_dict)
        return {}
    started = time.time()
    post, net, meta = runner.prepare_method(method)
    runner.evaluator.evaluate(variant["name"], post, net, {**meta, "description": variant.get("description", "")})
    result = {"name": variant["name"], "description": variant.get("description", ""), **diagnostics(runner, post),
              "val_auroc": validation_auroc(runner, post, net), **validation_shuffle_drop(runner, post, net),
              "training_seconds": training_seconds(post), "wall_seconds": round(time.time() - started, 1)}
    atomic_write_json(result, runner.results_dir / "diagnostics" / f"{variant['name']}.json")
    runner.leaderboard()
    return result


def _cell(value) -> str:
    """A (mean, std) table value as the mean with 2 decimals, '-' when the row has none."""
    return "-" if value is None else f"{value[0]:.2f}"


def _accuracy(value) -> str:
    """A binary accuracy with 3 decimals, '-' for a variant without Cb."""
    return "-" if value is None else f"{value:.3f}"


def _drop(value) -> str:
    """A shuffle drop in AUROC points, '-' for rows measured before it existed."""
    return "-" if value is None else f"{value:+.2f}"


def render(results: list, rows: list, benchmark: str) -> str:
    columns = table_columns(rows)
    by_name = {row["method"]: row for row in rows}
    base = next((r["training_seconds"] for r in results if r["name"] == "paper"), None)
    lines = [f"# MOODCAT ablation, {benchmark}, deployable protocol (label = classifier prediction)", "",
             "Cb acc: binary accuracy on ID-val matched + mismatched pairs; shuffled: the same with every image "
             "paired with another image's synthesis (labels kept); label effect: MSE(G(M(x),y), G(M(x),y')) / "
             "MSE(G(M(x),y), x). val AUROC: ID val against OOD val (the only OOD data used to choose a variant). "
             "Test AUROC and FPR@95 (OOD positive, OpenOOD) are means over the near / far sets. "
             "Training time: generator + Cb(s) of the variant, wall seconds (cached parts count as trained once). "
             "shuffle drop: val AUROC (with the far-OOD validation set where the benchmark declares one) minus the "
             "same with every x' taken from another image; a row counts as re-synthesis only with a drop >= 5.", "",
             "| variant | Cb acc | shuffled | label effect | val AUROC | shuffle drop | near AUROC | far AUROC | near FPR@95 | "
             "far FPR@95 | train s | extra s | what |", "|---" * 13 + "|"]
    for r in results:
        row = by_name.get(r["name"])
        if row is None:
            continue
        auroc = table_values(row, "AUROC", "ood_positive", columns)
        fpr = table_values(row, "FPR@95", "ood_positive", columns)
        extra = "" if base is None else f"{r['training_seconds'] - base:+.0f}"
        lines.append(f"| {r['name']} | {_accuracy(r['cb_val_acc'])} | {_accuracy(r['cb_val_acc_shuffled'])} | {r['ratio']:.3f} | "
                     f"{100 * r['val_auroc']:.2f} | {_drop(r.get('shuffle_drop'))} | {_cell(auroc['near mean'])} | {_cell(auroc['far mean'])} | {_cell(fpr['near mean'])} | "
                     f"{_cell(fpr['far mean'])} | {r['training_seconds']:.0f} | {extra} | {r['description']} |")
    return "\n".join(lines) + "\n"


def ablation(args) -> str:
    spec = load_yaml(args.ablation)
    for variant in spec["variants"]:  # row names become folder and file names
        check_plain_name(variant["name"], f"variant name in {args.ablation}")
    variants = [v for v in spec["variants"] if not args.variants or v["name"] in args.variants]
    unknown = set(args.variants or []) - {v["name"] for v in spec["variants"]}
    if unknown:
        raise UserError(f"unknown variant(s) {sorted(unknown)} in {args.ablation}; its variants: "
                        f"{', '.join(v['name'] for v in spec['variants'])}")
    for variant in variants if args.stage != "table" else []:
        variant_config(args, variant, spec)  # every variant's config is checked before any trains
    for variant in variants if args.stage != "table" else []:
        log.info("variant %s: %s", variant["name"], variant.get("description", ""))
        run_variant(args, variant, spec)
    if args.stage == "train":
        return ""
    folder = args.output_dir / "ablation" / args.benchmark
    every = [json.loads(p.read_text()) for p in sorted((folder / "diagnostics").glob("*.json"))]
    order = [v["name"] for v in spec["variants"]]
    every = sorted((r for r in every if r["name"] in order), key=lambda r: order.index(r["name"]))
    markdown = render(every, collect_rows(folder), args.benchmark)
    stem = args.ablation.stem
    atomic_write_text(markdown, folder / f"{stem}.md")
    atomic_write_json(every, folder / f"{stem}.json")
    return markdown


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_guarded(lambda: ablation(args))


if __name__ == "__main__":
    sys.exit(main())
