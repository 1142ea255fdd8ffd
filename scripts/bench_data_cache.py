#!/usr/bin/env python
"""Time loading a benchmark from an OpenOOD-layout folder, with and without the decoded-image cache.

    python scripts/bench_data_cache.py --pack ../shared/data --root /tmp/layout --benchmark cifar10 --clear-cache
    python scripts/bench_data_cache.py --pack ../shared/data --root /tmp/layout --benchmark cifar10

The first builds ``--root`` if it has no ``benchmark_imglist/`` (every set of the benchmark file that
has both an npz file in the pack and an image list is written as PNG files plus that list, see
:func:`moodcat_plugin.data.layout.write_array_layout`), empties the cache and times a first run (every
image decoded, cache written); the second times a run that reads the cache. Prints one line of JSON.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import yaml

from moodcat_plugin.data.arrays import read_npz
from moodcat_plugin.data.benchmark import load_benchmark
from moodcat_plugin.data.cache import CACHE_FOLDER
from moodcat_plugin.data.layout import LISTS, write_array_layout

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "benchmarks"


def all_specs(splits):
    yield from splits["id"].values()
    for key in ("ood_val", "outlier"):
        if splits.get(key):
            yield splits[key]
    for group in ("near", "far"):
        yield from (splits.get(group) or {}).values()


def build_layout(spec, pack: Path, root: Path) -> int:
    lists = {}
    for item in all_specs(spec["splits"]):
        npz = pack / f"{item.get('npz')}.npz"
        if "imglist" in item and npz.is_file():
            lists[item["imglist"].split("/", 1)[1]] = read_npz(npz, item["npz"])
    write_array_layout(root, lists)
    return sum(len(a) for a in lists.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", default="../shared/data", help="npz data pack to build the layout from")
    parser.add_argument("--root", required=True, help="OpenOOD-layout folder (built here if absent)")
    parser.add_argument("--benchmark", default="cifar10")
    parser.add_argument("--clear-cache", action="store_true", help="delete the decoded-image cache first")
    args = parser.parse_args(argv)
    spec = yaml.safe_load((CONFIGS / f"{args.benchmark}.yml").read_text())
    root = Path(args.root)
    built = 0
    if not (root / LISTS).is_dir():
        start = time.perf_counter()
        built = build_layout(spec, Path(args.pack), root)
        print(f"built {root}: {built} images in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if args.clear_cache:
        shutil.rmtree(root / CACHE_FOLDER, ignore_errors=True)
    cached = (root / CACHE_FOLDER).is_dir() and any((root / CACHE_FOLDER).glob("*.npz"))
    start = time.perf_counter()
    bench = load_benchmark(spec, str(root), progress=False)
    seconds = time.perf_counter() - start
    images = sum(len(a) for a in [*bench.id.values(), bench.ood_val, *bench.near.values(), *bench.far.values()]
                 + ([bench.outlier] if bench.outlier is not None else []))
    print(json.dumps({"benchmark": args.benchmark, "cache_before": bool(cached), "load_seconds": round(seconds, 2),
                      "images_loaded": images, "missing_sets": bench.missing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
