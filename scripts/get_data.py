#!/usr/bin/env python
"""Download the data of the real benchmarks into OpenOOD's layout; see ``--help``
(implementation: moodcat_plugin.data.fetch_sets). The benchmark CLI itself never downloads."""
import argparse
import sys

from moodcat_plugin.data import fetch_sets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Fetch, check and install the data of a benchmark, then run it with "
                    "python scripts/run_benchmark.py --benchmark NAME --data-root ROOT.",
        epilog=fetch_sets.describe(fetch_sets.default_catalog()), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", "-b", nargs="+", required=True,
                        choices=list(fetch_sets.BENCHMARK_SETS) + ["all"] + list(fetch_sets.ALIASES),
                        metavar="NAME", help="benchmark(s) whose sets to fetch: "
                        f"{', '.join(fetch_sets.BENCHMARK_SETS)}, all (listed below), or a benchmark config name")
    parser.add_argument("--root", default="data", help="data folder to fill (default: ./data); "
                        "pass the same folder to run_benchmark.py --data-root")
    parser.add_argument("--retries", type=int, default=3, help="retries per file after a dropped connection")
    args = parser.parse_args(argv)
    failures = fetch_sets.Fetcher(args.root, retries=args.retries).run(args.benchmark)
    if failures:
        print(f"{len(failures)} set(s) failed:", *failures, sep="\n", file=sys.stderr)
        return 1
    print(f"done: python scripts/run_benchmark.py --benchmark {args.benchmark[0]} --data-root {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
