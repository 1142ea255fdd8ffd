"""``reproduce_paper``: one table of the MOODCAT paper per command, the published values beside ours.

    python scripts/reproduce_paper.py --list
    python scripts/reproduce_paper.py --table 1 [--profile cpu] [--device cpu] [--output-dir results]
    python scripts/reproduce_paper.py --table 3 --part cifar-split0      # one sitting of a long table
    python scripts/reproduce_paper.py --table 4 --estimate               # the plan and time, nothing run
    python scripts/reproduce_paper.py --table 1 --pretrained weights/authors/moodcat_cifar10_authors.pt --protocol authors

Writes ``<output-dir>/paper/table<N>.{md,csv}`` (rewritten after every finished run, so an
interrupted table keeps what finished) and reuses the checkpoint cache (default
``<output-dir>/checkpoints``, shared with ``run_benchmark.py``); rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import time
from pathlib import Path
from typing import List, Optional

from moodcat_plugin.errors import UserError
from moodcat_plugin.utils import run_guarded

log = logging.getLogger("reproduce_paper")
PROFILES = ("tiny", "demo", "cpu", "gpu")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="reproduce_paper.py", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.split("\n")[2:7]))
    parser.add_argument("--table", type=int, help="paper table number (see --list)")
    parser.add_argument("--part", help="run only this part of the table (see --list), e.g. for one sitting")
    parser.add_argument("--list", action="store_true", help="list the tables, their parts and expected times")
    parser.add_argument("--estimate", action="store_true", help="print the plan and expected time, run nothing")
    parser.add_argument("--profile", default="cpu", choices=PROFILES, help="training profile (default: cpu)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="compute device (default: auto)")
    parser.add_argument("--output-dir", type=Path, default=Path("results"),
                        help="tables go to <output-dir>/paper (default: results)")
    parser.add_argument("--checkpoint-dir", help="trained-model cache (default: <output-dir>/checkpoints)")
    parser.add_argument("--data-root", help="npz data pack or OpenOOD data folder (default: ../shared/data)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a key for every run, e.g. num_threads=1, or for the runs of one method, "
                             "e.g. postprocessors.moodcat.gan.cutmix=false (repeatable)")
    parser.add_argument("--pretrained", action="append", default=[], metavar="FILE",
                        help="MOODCAT weights file (ours, or the authors' imported by scripts/import_moodcat_weights.py) "
                             "for the paper generator + Cb of the `moodcat` rows on its benchmark (repeatable: one per "
                             "benchmark); rows that change the generator or Cb still train")
    parser.add_argument("--protocol", choices=["deployable", "authors"], default="deployable",
                        help="labels MOODCAT rows synthesise under: deployable (classifier's prediction, default) or "
                             "authors (ID: true label, OOD: random label; needs test labels; never a leaderboard; "
                             "tables go to table<N>-protocol-authors.{md,csv})")
    parser.add_argument("--rerun", action="store_true", help="score finished runs again (models stay cached)")
    parser.add_argument("--config-root", type=Path, help="folder holding base.yml and the config folders")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def context(args):
    from moodcat_plugin.paper.runs import Context
    from moodcat_plugin.pipeline import default_config_root

    return Context(config_root=Path(args.config_root or default_config_root()), profile=args.profile,
                   output_dir=args.output_dir, checkpoint_dir=args.checkpoint_dir, data_root=args.data_root,
                   device=args.device, overrides=list(args.overrides), progress=not args.no_progress,
                   rerun=args.rerun, pretrained=list(args.pretrained), protocol=args.protocol)


def command_line(args, table: int, part: Optional[str] = None) -> str:
    """The command that (re)runs a table, for 'pending' cells and --list: with every option that
    names its runs (profile, device, folders, --set overrides), so rerunning it resumes them
    instead of training other models."""
    words = ["python scripts/reproduce_paper.py --table", str(table)]
    if part:
        words += ["--part", part]
    if args.profile != "cpu":
        words += ["--profile", args.profile]
    for option, value in (("--device", args.device), ("--output-dir", args.output_dir),
                          ("--checkpoint-dir", args.checkpoint_dir), ("--data-root", args.data_root),
                          ("--config-root", args.config_root)):
        if value is not None and not (option == "--output-dir" and value == Path("results")):
            words += [option, shlex.quote(str(value))]
    for override in args.overrides:
        words += ["--set", shlex.quote(override)]
    for path in args.pretrained:
        words += ["--pretrained", shlex.quote(str(path))]
    if args.protocol != "deployable":
        words += ["--protocol", args.protocol]
    return " ".join(words)


def list_tables(args) -> str:
    """Every table: what it runs, its expected time from scratch and with the current cache, and
    whether it fits one sitting; tables over the limit list their parts."""
    from moodcat_plugin.paper.estimate import CostModel, duration, estimate_runs
    from moodcat_plugin.paper.runs import blocked_reason
    from moodcat_plugin.paper.spec import load_tables

    ctx = context(args)
    tables = load_tables(ctx.config_root)
    model = CostModel(ctx.config_root, ctx.profile)
    lines = [f"Tables of the MOODCAT paper (profile {ctx.profile}; expected wall times "
             + (f"on {model.machine}" if not model.note else f"not estimated: {model.note}")
             + f"; one sitting = {duration(model.limit_s)}):", ""]
    in_order: set = set()  # models of the tables listed so far (run in this order, later tables reuse them)
    for number, table in tables.items():
        runs = table.runs()
        benchmarks = sorted({run.benchmark for run in runs})
        lines.append(f"Table {number}: {table.caption[:110]}{'...' if len(table.caption) > 110 else ''}")
        lines.append(f"  runs {len(runs)} on {', '.join(benchmarks)}; command: {command_line(args, number)}")
        blocked = sorted({reason for reason in (blocked_reason(run, ctx) for run in runs) if reason})
        if blocked:
            lines.append(f"  rows that will print 'not run': {'; '.join(blocked)}")
        if model.note:
            continue
        fresh, now = estimate_runs(runs, ctx, model, fresh=True), estimate_runs(runs, ctx, model)
        ordered = estimate_runs(runs, ctx, model, fresh=True, seen=in_order)
        fits = "fits one sitting" if fresh.seconds <= model.limit_s else \
            "MORE than one sitting from scratch: rerun the same command to resume"
        lines.append(f"  expected: {duration(fresh.seconds)} from scratch ({fits}); {duration(ordered.seconds)} "
                     f"after the tables above; {duration(now.seconds)} with the models and runs cached now")
        if table.parts:
            seen: set = set()
            for name in table.parts:
                part = estimate_runs(table.runs(name), ctx, model, fresh=True, seen=seen)
                fits = "fits" if part.seconds <= model.limit_s else \
                    "does NOT fit: rerun the same command in a second sitting, it resumes; or use a GPU"
                lines.append(f"    --part {name}: {duration(part.seconds)} after the parts above ({fits})")
    return "\n".join(lines)


def _state(run, ctx) -> str:
    from moodcat_plugin.paper.runs import blocked_reason, is_finished

    if is_finished(run, ctx):
        return "finished"
    reason = blocked_reason(run, ctx)
    return f"not run: {reason}" if reason else "to run"


def run_table(args) -> str:
    from moodcat_plugin.paper.spec import load_tables

    ctx = context(args)
    tables = load_tables(ctx.config_root)
    if args.table not in tables:
        raise UserError(f"the paper has no reproducible table {args.table}; tables: "
                        f"{', '.join(map(str, tables))} (see --list)")
    return reproduce_table(tables[args.table], ctx, args.part, command_line(args, args.table),
                           estimate_only=args.estimate)


def reproduce_table(table, ctx, part: Optional[str] = None, command: str = "", estimate_only: bool = False,
                    execute=None) -> str:
    """Check every run's config, print the expected wall time, run what is not finished (all of
    ``table`` or one ``part``) and rewrite the table after each run; returns its Markdown.
    ``command`` (re)runs the whole table (named in pending cells); ``execute`` replaces
    :func:`moodcat_plugin.paper.runs.execute` (tests)."""
    from moodcat_plugin.paper import runs as paper_runs
    from moodcat_plugin.paper.estimate import CostModel, estimate_runs
    from moodcat_plugin.paper.tables import git_commit, write_table
    from moodcat_plugin.pipeline import PACKAGE_ROOT

    execute = execute or paper_runs.execute
    runs, every_run = table.runs(part), table.runs()
    paper_runs.check_method_overrides(ctx)
    for run in every_run:  # every config checked (one-line errors) before anything trains
        paper_runs.run_config(run, ctx)
    model = CostModel(ctx.config_root, ctx.profile)
    estimate = estimate_runs(runs, ctx, model)
    scope = f"part {part} of table {table.number}" if part else f"table {table.number}"
    log.info("%s: %d run(s); expected wall time at profile %s: %s", scope, len(runs), ctx.profile, estimate.summary())
    if not model.note and estimate.seconds > model.limit_s:
        log.warning("%s needs more than one sitting; it resumes where it stops%s", scope,
                    f"; or run its parts one per sitting: {', '.join(table.parts)}" if table.parts and not part else "")
    if estimate_only:
        return f"{scope}: expected {estimate.summary()}\n" + "\n".join(
            f"  {run.describe()}: {_state(run, ctx)}" for run in runs)
    commit = git_commit(PACKAGE_ROOT.parent)
    started = time.time()
    for number, run in enumerate(runs, start=1):
        log.info("[%d/%d] %s", number, len(runs), run.describe())
        log.info("[%d/%d] %s", number, len(runs), execute(run, ctx))
        write_table(table, ctx, command, commit, estimate.summary(), every_run)
    markdown = write_table(table, ctx, command, commit, estimate.summary(), every_run)
    log.info("%s done in %.0f s: %s", scope, time.time() - started, ctx.paper_dir / f"table{table.number}.{{md,csv}}")
    return markdown


def run(args) -> str:
    if args.list:
        return list_tables(args)
    if args.table is None:
        raise UserError("name a table with --table N (see --list)")
    return run_table(args)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    return run_guarded(lambda: run(args))
