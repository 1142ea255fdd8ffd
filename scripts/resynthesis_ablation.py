#!/usr/bin/env python
"""Training-free re-synthesis scores (issue 27): one table of variants on one classifier and generator.

Variants come from ``configs/ablations/resynthesis.yml`` (switches of
:mod:`moodcat_plugin.moodcat.resynthesis`). Stage ``read`` runs the classifier and the generator
once per image and mask on ID val, TIN val, the far-OOD validation set (``splits.ood_val_far``)
and the test sets (``--per-set`` images of each, a seeded subset), and saves the readouts
(resumable: a finished set is not read again). Stage ``table`` scores every variant from them and
writes ``<output>/resynthesis/<benchmark>/resynthesis.{md,json}``: val AUROC (ID val against TIN
val and against far val, mean), its drop with x' shuffled across images, label effect, near/far
AUROC and FPR@95 (OOD positive) and the extra scoring seconds per 1,000 images. MSP and EBO on the
same images are rows too. Labels are always the classifier's predictions.

    python scripts/resynthesis_ablation.py -b cifar10 --pretrained weights/moodcat_cifar10.pt --output-dir results

Without ``--pretrained`` the generator is the config's (trained, or taken from the checkpoint
cache): e.g. the class-consistency generator with
``--set postprocessors.moodcat.gan.class_consistency_weight=1.0``. Only the generator is trained
(no Cb). The readouts folder records which classifier and generator it holds (``identity.json``);
reading into a folder made with another one is refused.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from moodcat_plugin.config import load_yaml
from moodcat_plugin.data import make_loader
from moodcat_plugin.errors import UserError
from moodcat_plugin.evaluation.metrics import ood_metrics
from moodcat_plugin.moodcat import runs
from moodcat_plugin.moodcat.diagnostics import SHUFFLE_DROP_MIN, shuffle_drop
from moodcat_plugin.moodcat.fusion import CascadeFusion
from moodcat_plugin.moodcat.resynthesis import (MASK_FAMILIES, agreement_of, concat_readouts, ebo_distance,
                                                label_effect_of, read_synthesis, shuffled_synthesis,
                                                variant_distance)
from moodcat_plugin.pipeline import (Runner, build_config, classifier_run, default_config_root, method_config,
                                     pretrained_flags)
from moodcat_plugin.training import run_folder
from moodcat_plugin.utils import atomic_torch_save, atomic_write_json, atomic_write_text, run_guarded

log = logging.getLogger("resynthesis_ablation")
METHOD = "moodcat"
SUBSET_SEED = 27
BATCH = 250
VAL_SETS = ("id_val", "tin_val", "far_val")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", "-b", default="cifar10")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--ablation", type=Path, default=default_config_root() / "ablations" / "resynthesis.yml")
    parser.add_argument("--pretrained", help="generator weights file, e.g. weights/moodcat_cifar10.pt "
                        "(default: the config's generator, trained or from the checkpoint cache)")
    parser.add_argument("--stage", choices=["read", "table", "all"], default="all")
    parser.add_argument("--per-set", type=int, default=600, help="test images per test set (seeded subset)")
    parser.add_argument("--masks", nargs="+", choices=MASK_FAMILIES, default=list(MASK_FAMILIES),
                        help="mask families to read (two processes may read one each)")
    parser.add_argument("--output-dir", type=Path, default=Path("results"))
    parser.add_argument("--data-root")
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="global override")
    args = parser.parse_args(argv)
    if args.per_set < 2:
        parser.error("--per-set must be at least 2")
    return args


def build_runner(args, settings: dict):
    """(runner, generator, classifier): the shipped generator (``--pretrained``) or the config's
    (trained or cached; no Cb) and the benchmark's classifier. What names both and the read
    ``settings`` (:func:`readout_identity`) is checked against the readouts folder before anything
    trains."""
    root = default_config_root()
    flags = {"output_dir": str(args.output_dir / "resynthesis"), "checkpoint_dir": str(args.output_dir / "checkpoints"),
             "data_root": args.data_root, "device": args.device, "progress": False,
             "postprocessors": pretrained_flags([METHOD], args.pretrained, root) if args.pretrained else None}
    only_generator = f"postprocessors.{METHOD}.postprocessor.postprocessor_args.scorers=[cb]"  # no IQA trunks needed
    config = build_config(args.benchmark, [METHOD], args.profile, overrides=[only_generator, *args.overrides],
                          flags=flags)
    runner = Runner(config)
    identity = readout_identity(args, method_config(runner.config, METHOD), settings)
    check_identity(args.output_dir / "resynthesis" / args.benchmark / "readouts", identity)
    post, net, _ = runner.prepare_method(METHOD)
    if args.pretrained:
        post.train(None, runner.evaluator.id_loader_dict)  # loads the file's generator (and Cb), trains nothing
        gan = post.gan
    else:
        gan, _, _ = runs.train_gan(post.config, post.benchmark, net, runner.evaluator.id_loader_dict, post.device)
    return runner, gan, net


def readout_identity(args, cfg, settings: dict) -> dict:
    """What the readouts depend on: classifier and generator run folders (or the weights file),
    test subset size and read settings."""
    generator = ({"pretrained": str(args.pretrained)} if args.pretrained else
                 {"run": run_folder(cfg, f"{args.benchmark}-moodcat_gan", runs.gan_run_key(cfg)).name})
    return {"benchmark": args.benchmark, "classifier": classifier_run(cfg)[1].name, "generator": generator,
            "per_set": args.per_set, "read": settings}


def check_identity(folder: Path, identity: dict) -> None:
    """Record which classifier and generator ``folder``'s readouts come from; refuse to mix."""
    path = folder / "identity.json"
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != identity:
            differ = ", ".join(f"{k} {recorded.get(k)} (now {v})" for k, v in identity.items() if recorded.get(k) != v)
            raise UserError(f"{folder} holds readouts of another classifier or generator: {differ}; "
                            "use another --output-dir for this one")
    elif any(folder.glob("*.pt")):
        raise UserError(f"{folder} holds readouts of an unknown classifier and generator (no identity.json); "
                        "use another --output-dir")
    else:
        atomic_write_json(identity, path)


def _subset(array, count: int, name: str):
    if len(array) <= count:
        return array
    rng = np.random.default_rng(SUBSET_SEED + zlib.crc32(name.encode()))
    return array.subset(np.sort(rng.choice(len(array), count, replace=False)))


def evaluation_sets(runner, per_set: int) -> dict:
    """name -> (group, images): the three validation sets whole, every test set subsampled."""
    bench = runner.benchmark
    if bench.ood_val_far is None:
        raise UserError(f"benchmark '{bench.name}' declares no far-OOD validation set (splits.ood_val_far)")
    sets = {"id_val": ("val", bench.id["val"]), "tin_val": ("val", bench.ood_val), "far_val": ("val", bench.ood_val_far),
            "id_test": ("id", _subset(bench.id["test"], per_set, "id_test"))}
    for group, named in bench.ood_groups().items():
        for name, array in named.items():
            sets[name] = (group, _subset(array, per_set, name))
    return sets


def read_stage(args, spec) -> None:
    settings = spec["read"]
    runner, gan, net = build_runner(args, settings)
    bench, device = runner.benchmark, runner.config.device
    folder = args.output_dir / "resynthesis" / args.benchmark / "readouts"
    for name, (group, images) in evaluation_sets(runner, args.per_set).items():
        for family in args.masks:
            path = folder / f"{name}_{family}.pt"
            if path.is_file():
                continue
            num_masks = settings["num_masks"] if family == "random" else settings["cam_masks"]
            num_alt = settings["num_alt"] if family == "random" else settings["cam_alt"]
            generator = torch.Generator().manual_seed(zlib.crc32(f"{name}/{family}".encode()))
            loader = make_loader(images, bench.mean, bench.std, BATCH, device=device)
            parts, classifier_s, started = [], 0.0, time.time()
            for batch in loader:
                data = batch["data"].to(device)
                tick = time.time()
                with torch.no_grad():
                    net(data)
                classifier_s += time.time() - tick
                parts.append(read_synthesis(gan, net, data, bench.mean, bench.std, masks=family, num_masks=num_masks,
                                            num_alt=num_alt, area=(0.15, 0.33), generator=generator))
            total = time.time() - started
            atomic_torch_save({k: v.cpu() for k, v in concat_readouts(parts).items()}, path)
            atomic_write_json({"set": name, "images": len(images), "seconds": total, "classifier_seconds": classifier_s,
                               "syntheses": num_masks + num_alt, "group": group}, path.with_suffix(".json"))
            log.info("%s/%s: %d images, %.0f s", name, family, len(images), total)


def _load(folder: Path, name: str, family: str):
    return torch.load(folder / f"{name}_{family}.pt", weights_only=True)


def seconds_per_synthesis(timing: dict) -> float:
    """Measured scoring seconds per image and synthesis (generator + classifier on x'), beyond
    the classifier's own pass."""
    extra = sum(t["seconds"] - 2 * t["classifier_seconds"] for t in timing.values())  # read_synthesis runs net(x) too
    passes = sum(t["images"] * t["syntheses"] for t in timing.values())
    return extra / max(1, passes)


def row_scorer(variant: dict, readouts: dict):
    """(distance function of one set's readout, high = OOD) for a variant row or a baseline."""
    kind = variant.get("baseline")
    if kind == "msp":
        return lambda r: -torch.softmax(r["logits"], dim=1).max(dim=1).values
    if kind == "ebo":
        return ebo_distance
    plain = lambda r: variant_distance(r, variant["distance"], variant["reference"], variant["num_masks"])  # noqa: E731
    if variant.get("fuse", "none") == "none":
        return plain
    if variant["fuse"] != "ebo":
        raise UserError(f"variant {variant['name']}: fuse must be none or ebo")
    fusion = CascadeFusion().fit({"resynthesis": plain(readouts["id_val"]), "ebo": ebo_distance(readouts["id_val"])})
    return lambda r: -fusion.transform({"resynthesis": plain(r), "ebo": ebo_distance(r)})


def syntheses_of(variant: dict) -> int:
    if variant.get("baseline"):
        return 0
    alt = variant["reference"] != "input"
    return variant["num_masks"] * (2 if alt else 1)


def score_row(variant: dict, readouts: dict, groups: dict, unit_s: float) -> dict:
    score = row_scorer(variant, readouts)
    validation = shuffle_drop(score, readouts["id_val"], {"tin_val": readouts["tin_val"],
                                                          "far_val": readouts["far_val"]}, shuffled_synthesis)
    id_conf = -score(readouts["id_test"]).numpy()
    result = {"name": variant["name"], "val_auroc": validation["auroc"], "shuffle_drop": validation["drop"],
              "val_auroc_shuffled": validation["auroc_shuffled"], "val_parts": validation["parts"]}
    for group in ("near", "far"):
        metrics = {name: ood_metrics(id_conf, -score(readouts[name]).numpy()) for name in groups[group]}
        result[f"{group}_sets"] = {name: 100 * m["AUROC"] for name, m in metrics.items()}
        result[f"{group}_auroc"] = float(np.mean([100 * m["AUROC"] for m in metrics.values()]))
        result[f"{group}_fpr"] = float(np.mean([100 * m["FPR@95_ood_positive"] for m in metrics.values()]))
    standalone = not variant.get("baseline") and variant.get("fuse", "none") == "none"
    result["label_effect"] = None if variant.get("baseline") else label_effect_of(readouts["id_val"])
    result["counts"] = bool(standalone and validation["drop"] >= SHUFFLE_DROP_MIN)
    result["extra_s_per_1000"] = 1000 * unit_s * syntheses_of(variant)
    return result


def table_stage(args, spec) -> str:
    folder = args.output_dir / "resynthesis" / args.benchmark
    timing = {path.stem: json.loads(path.read_text()) for path in sorted((folder / "readouts").glob("*.json"))
              if path.stem != "identity"}
    missing = [f"{t['set']}_{family}" for t in timing.values() for family in MASK_FAMILIES
               if f"{t['set']}_{family}" not in timing]
    if not timing or missing:
        raise UserError(f"readouts missing in {folder / 'readouts'}: {', '.join(missing) or 'all'}; run --stage read")
    names = list(dict.fromkeys(t["set"] for t in timing.values()))
    order = ["id_val", "tin_val", "far_val", "id_test"]
    names = sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))
    groups = {"near": [], "far": []}
    for name in names:
        group = timing[f"{name}_random"]["group"]
        if group in groups:
            groups[group].append(name)
    unit_s = seconds_per_synthesis(timing)
    rows = [{"name": "msp", "baseline": "msp"}, {"name": "ebo", "baseline": "ebo"}] + list(spec["variants"])
    loaded = {family: {name: _load(folder / "readouts", name, family) for name in names} for family in MASK_FAMILIES}
    results = [score_row(variant, loaded[variant.get("masks", "random")], groups, unit_s) for variant in rows]
    images = {name: timing[f"{name}_random"]["images"] for name in names}
    agreement = {family: {name: agreement_of(readout) for name, readout in readouts.items()}
                 for family, readouts in loaded.items()}
    identity_file = folder / "readouts" / "identity.json"
    identity = json.loads(identity_file.read_text()) if identity_file.is_file() else None
    markdown = render(results, images, unit_s, args.benchmark, identity, agreement)
    atomic_write_text(markdown, folder / "resynthesis.md")
    atomic_write_json({"rows": results, "images": images, "seconds_per_synthesis": unit_s, "identity": identity,
                       "agreement": agreement},
                      folder / "resynthesis.json")
    return markdown


def _num(value, digits=2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(results, images, unit_s, benchmark, identity=None, agreement=None) -> str:
    sizes = ", ".join(f"{name} {count}" for name, count in images.items())
    made_by = ("Readouts of an unrecorded classifier and generator." if identity is None else
               f"Classifier run {identity['classifier']}; generator {json.dumps(identity['generator'])}.")
    if agreement:
        made_by += " Prediction agreement pred(x') = pred(x), per set: " + "; ".join(
            f"{family} masks " + ", ".join(f"{name} {100 * share:.1f} %" for name, share in shares.items())
            for family, shares in agreement.items()) + "."
    lines = [f"# Training-free re-synthesis scores, {benchmark}, deployable protocol (label = classifier prediction)", "",
             made_by, "",
             f"Images per set: {sizes}. val AUROC: mean of ID val against TIN val and against far val; "
             f"shuffle drop: val AUROC minus val AUROC with every x' taken from another image of its set (a row "
             f"counts as re-synthesis only with a drop >= {SHUFFLE_DROP_MIN:g}); label effect: pixel MSE between "
             "the syntheses under the predicted and the runner-up label over MSE(x', x) on ID val; test AUROC and "
             "FPR@95 (OOD positive) are means over the near / far sets; extra s: measured scoring seconds per 1,000 "
             f"images beyond the classifier ({unit_s * 1000:.2f} s per synthesis pass).", "",
             "| row | counts | val AUROC | val TIN / far | shuffle drop | label effect | near AUROC | far AUROC | "
             "near FPR@95 | far FPR@95 | extra s / 1k | per set AUROC |", "|---" * 12 + "|"]
    for r in results:
        per_set = ", ".join(f"{k} {v:.1f}" for k, v in {**r["near_sets"], **r["far_sets"]}.items())
        parts = " / ".join(f"{v:.1f}" for v in r["val_parts"].values())
        lines.append(f"| {r['name']} | {'yes' if r['counts'] else 'no'} | {r['val_auroc']:.2f} | {parts} | "
                     f"{r['shuffle_drop']:+.2f} | "
                     f"{_num(r['label_effect'], 3)} | {r['near_auroc']:.2f} | {r['far_auroc']:.2f} | {r['near_fpr']:.2f} | "
                     f"{r['far_fpr']:.2f} | {r['extra_s_per_1000']:.0f} | {per_set} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    def action():
        spec = load_yaml(args.ablation)
        if args.stage in ("read", "all"):
            read_stage(args, spec)
        return table_stage(args, spec) if args.stage in ("table", "all") else ""

    return run_guarded(action)


if __name__ == "__main__":
    sys.exit(main())
