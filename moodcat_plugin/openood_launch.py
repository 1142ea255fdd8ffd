"""Run OpenOOD v1.5's own ``main.py`` with this package's methods registered, unedited on both sides.

From the OpenOOD checkout that ``pip install -e .`` was run in, give the launcher exactly what
``python main.py`` takes, naming our method file in the ``--config`` list::

    python -m moodcat_plugin.openood_launch --config configs/datasets/cifar10/cifar10.yml \\
        configs/datasets/cifar10/cifar10_ood.yml configs/networks/resnet18_32x32.yml \\
        configs/pipelines/test/test_ood.yml configs/preprocessors/base_preprocessor.yml \\
        moodcat_plugin:moodcat --network.checkpoint <classifier.ckpt> [--profile gpu]

What it does, in order:

1. :func:`moodcat_plugin.openood_bridge.register_into_openood` for every name in
   :data:`OPENOOD_METHODS` (today ``moodcat`` only: the other detectors of this package are
   OpenOOD's own methods under the same names, equal per sample (tests/test_openood_equality.py),
   so inside OpenOOD its own classes and its own ``configs/postprocessors/<name>.yml`` run them).
2. Resolves our method files in the ``--config`` list, read in place from this package's
   ``configs/postprocessors/`` (nothing is copied into OpenOOD's tree, nothing is written there):
   ``moodcat_plugin:NAME`` names ours explicitly; a path ``.../postprocessors/NAME.yml`` that does
   not exist (OpenOOD's checkout has no ``moodcat.yml``) with NAME registered means ours too. A
   file of that name the user placed in OpenOOD's tree is used as it is.
3. Puts a one-key file ``profile: <DEFAULT_PROFILE>`` FIRST in the list when one of ours is used,
   so a ``profile`` in a later file or OpenOOD's own override ``--profile NAME`` wins (OpenOOD's
   overrides only accept keys some file defines). Default: ``cpu`` (the bridge's
   ``DEFAULT_PROFILE``), the CIFAR-on-2-CPU-cores schedule, on any machine: the device is still
   CUDA when available; paper-scale training (~520k GAN steps) needs ``--profile gpu``.
4. Runs OpenOOD's ``main.py`` (found next to the imported ``openood`` package, or in
   ``--openood-root DIR``, a launcher option removed before OpenOOD parses the rest) as
   ``__main__`` in this process, with ``sys.argv`` rewritten: its ``setup_config`` and
   ``get_pipeline(config).run()`` do the rest.

Multi-GPU runs (``num_gpus * num_machines > 1``) are refused: OpenOOD's ``launch`` then spawns
worker processes, which would not hold the registration. Errors are one line (status 2).
"""
from __future__ import annotations

import runpy
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from moodcat_plugin.errors import UserError
from moodcat_plugin.openood_bridge import DEFAULT_PROFILE, register_into_openood
from moodcat_plugin.pipeline import PACKAGE_ROOT
from moodcat_plugin.utils import run_guarded

#: Methods of this package that OpenOOD does not have, registered into it by the launcher.
OPENOOD_METHODS = ("moodcat",)
PREFIX = "moodcat_plugin:"
ROOT_OPTION = "--openood-root"


def method_folder() -> Path:
    """This package's ``configs/postprocessors`` (source checkout / editable install only)."""
    folder = PACKAGE_ROOT.parent / "configs" / "postprocessors"
    if not folder.is_dir():
        raise UserError(f"no {folder}: the launcher reads our method files from the source checkout; "
                        "install moodcat_plugin with `pip install -e .` from its repository")
    return folder


def our_method_file(name: str) -> Path:
    """``configs/postprocessors/<name>.yml`` of this package for a registered ``name``; any other
    name (paths, ``..``, OpenOOD's own methods) is refused, so no outside path is ever used."""
    name = name[:-len(".yml")] if name.endswith(".yml") else name
    if name not in OPENOOD_METHODS:
        raise UserError(f"unknown moodcat_plugin method '{name}' for OpenOOD: registered {', '.join(OPENOOD_METHODS)} "
                        "(OpenOOD's own detectors, e.g. knn, use its configs/postprocessors/<name>.yml)")
    return method_folder() / f"{name}.yml"


def resolve_config_path(item: str) -> Optional[Path]:
    """Our method file for one ``--config`` entry, or None when the entry is not ours."""
    if item.startswith(PREFIX):
        return our_method_file(item[len(PREFIX):])
    path = Path(item)
    if not path.exists() and path.parent.name == "postprocessors" and path.suffix == ".yml" \
            and path.stem in OPENOOD_METHODS:
        return our_method_file(path.stem)
    return None


def config_span(args: Sequence[str]) -> range:
    """Indices of the ``--config`` file list (argparse's ``nargs='+'``: up to the next option)."""
    if "--config" not in args:
        raise UserError("no --config list: give OpenOOD's main.py arguments, e.g. "
                        "--config <dataset.yml ...> moodcat_plugin:moodcat")
    start = args.index("--config") + 1
    end = start
    while end < len(args) and not args[end].startswith("--"):
        end += 1
    if end == start:
        raise UserError("--config names no file")
    return range(start, end)


def rewrite_arguments(args: Sequence[str], overlay_dir: Path) -> List[str]:
    """OpenOOD's ``main.py`` arguments with our method files resolved and, when one is used, the
    default-profile file written to ``overlay_dir`` and put first in the ``--config`` list."""
    args = list(args)
    span = config_span(args)
    ours = False
    for index in span:
        path = resolve_config_path(args[index])
        if path is not None:
            args[index], ours = str(path), True
    if ours:
        overlay = overlay_dir / "moodcat_plugin_profile.yml"
        overlay.write_text(f"profile: {DEFAULT_PROFILE}\n")
        args.insert(span.start, str(overlay))
    return args


def split_root_option(argv: Sequence[str]):
    """``(openood_root or None, the other arguments)``."""
    argv = list(argv)
    if ROOT_OPTION not in argv:
        return None, argv
    index = argv.index(ROOT_OPTION)
    if index + 1 >= len(argv):
        raise UserError(f"{ROOT_OPTION} needs a folder (the OpenOOD checkout holding main.py)")
    return Path(argv[index + 1]), argv[:index] + argv[index + 2:]


def find_main_py(root: Optional[Path]) -> Path:
    """OpenOOD's ``main.py``: in ``root``, else beside the imported ``openood`` package."""
    if root is None:
        import openood  # registration succeeded, so it imports

        root = Path(openood.__file__).resolve().parent.parent
    main_py = root / "main.py"
    if not main_py.is_file():
        raise UserError(f"no OpenOOD main.py in {root}: pass {ROOT_OPTION} <your OpenOOD checkout>")
    return main_py


def refuse_multi_process(main_py: Path, args: Sequence[str]) -> None:
    """Parse the arguments with OpenOOD's own ``setup_config`` and refuse a spawned multi-GPU run."""
    from openood.utils import setup_config

    saved = sys.argv
    sys.argv = [str(main_py), *args]
    try:
        config = setup_config()
    finally:
        sys.argv = saved
    workers = int(config.get("num_gpus", 1) or 1) * int(config.get("num_machines", 1) or 1)
    if workers > 1:
        raise UserError(f"num_gpus * num_machines = {workers}: OpenOOD would spawn workers that do not hold "
                        "the moodcat registration; run with --num_gpus 1 --num_machines 1")


def launch(argv: Sequence[str]) -> None:
    root, args = split_root_option(argv)
    for name in OPENOOD_METHODS:
        register_into_openood(name)
    main_py = find_main_py(root)
    with tempfile.TemporaryDirectory(prefix="moodcat_plugin_openood_") as overlay_dir:
        args = rewrite_arguments(args, Path(overlay_dir))
        refuse_multi_process(main_py, args)
        saved_argv, saved_path = sys.argv, list(sys.path)
        sys.argv = [str(main_py), *args]
        sys.path.insert(0, str(main_py.parent))  # as `python main.py` would
        try:
            runpy.run_path(str(main_py), run_name="__main__")
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    return run_guarded(lambda: launch(argv))


__all__ = ["OPENOOD_METHODS", "launch", "main", "rewrite_arguments"]

if __name__ == "__main__":
    sys.exit(main())
