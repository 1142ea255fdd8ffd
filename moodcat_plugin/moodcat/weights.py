"""Shipped MOODCAT weights: one small file per benchmark, checked by sha256 before it is read.

A weights file holds only what scoring needs, in fp16: the encoder and decoder of a trained
generator, optionally the Cb trained on it, the network sections that build them, and where they
came from. It is written by :func:`export_weights` (``scripts/export_moodcat_weights.py``) from
the run folders under ``checkpoints/`` and read WEIGHTS-ONLY (``torch.load(weights_only=True)``).
Layout::

    {"format": "moodcat-weights/1", "benchmark": "cifar10", "num_classes": 10,
     "gan_network": {...}, "cb_network": {...} or None,
     "modules": {"encoder": state dict, "decoder": state dict[, "cb": state dict]},
     "provenance": {...}}                   # also recorded in the manifest

Every file is listed in ``MANIFEST.json`` beside it (``{"files": {name: {"sha256": ..., ...}}}``,
written by the export); :func:`verify` refuses a file whose sha256 differs from its entry, or that
has none, with one line naming the file and the fix. fp16 halves the size (paper-size encoder +
decoder + Cb: 4.6 M values, ~9 MB); scores differ from the fp32 model's by that rounding only.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from moodcat_plugin.errors import CheckpointError, ConfigError, UserError
from moodcat_plugin.moodcat.runs import cb_network_name
from moodcat_plugin.registry import NETWORKS
from moodcat_plugin.utils import atomic_torch_save, atomic_write_json, load_checkpoint, load_state_dict_strict

log = logging.getLogger(__name__)

FORMAT = "moodcat-weights/1"
MANIFEST = "MANIFEST.json"
GAN_PARTS = ("encoder", "decoder")   # scoring needs no discriminator and no EMA decoder
EXPORT_FIX = "re-export it with scripts/export_moodcat_weights.py, which records it"


REPOSITORY = Path(__file__).resolve().parents[2]


def locate(path: Path | str) -> Path:
    """``path`` as given, or, when relative and absent from the working folder, relative to the
    source checkout holding this package (so ``weights/moodcat_cifar10.pt`` works from anywhere)."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists() or not (REPOSITORY / path).exists():
        return path
    return REPOSITORY / path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict:
    """``MANIFEST.json`` of ``folder`` (``{'files': {}}`` when there is none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {"files": {}}
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore it (git checkout -- {path})") from exc
    if isinstance(manifest, dict):
        manifest.setdefault("files", {})
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(entry, dict) and isinstance(entry.get("sha256", ""), str)
                                              for entry in files.values()):
        raise CheckpointError(f"{path} is malformed (expected {{\"files\": {{name: {{\"sha256\": ...}}}}}}); "
                              f"restore it (git checkout -- {path}) or {EXPORT_FIX}")
    return manifest


def verify(path: Path | str) -> str:
    """sha256 of ``path`` after checking it against its entry in ``MANIFEST.json`` beside it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a weights file" if path.is_dir() else "not found"
        raise CheckpointError(f"pretrained weights file {path} {what}; check the path (--pretrained / "
                              "postprocessors.<method>.pretrained.file) or export one from a training run with "
                              "scripts/export_moodcat_weights.py")
    entry = read_manifest(path.parent)["files"].get(path.name)
    if not entry or "sha256" not in entry:
        raise CheckpointError(f"pretrained weights {path} have no sha256 in {path.parent / MANIFEST}, so they cannot be "
                              f"checked; {EXPORT_FIX}")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise CheckpointError(f"pretrained weights {path} do not match the sha256 recorded in {path.parent / MANIFEST} "
                              f"(file {actual[:12]}..., recorded {entry['sha256'][:12]}...): the file is damaged or was "
                              f"replaced; restore it (git checkout -- {path}) or {EXPORT_FIX}")
    return actual


def load_weights(path: Path | str) -> dict:
    """The verified, weights-only contents of a weights file (tensors still fp16)."""
    path = Path(path)
    verify(path)
    content = load_checkpoint(path)
    found = content.get("format") if isinstance(content, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{path} is not a MOODCAT weights file (format {found!r}, expected "
                              f"{FORMAT!r}); {EXPORT_FIX}")
    problem = layout_problem(content)
    if problem:
        raise CheckpointError(f"{path} is a malformed MOODCAT weights file ({problem}); {EXPORT_FIX}")
    return content


#: The keys of a weights file and their types (``modules``: part name -> state dict).
LAYOUT = {"benchmark": str, "num_classes": int, "gan_network": dict, "modules": dict, "provenance": dict}


def layout_problem(content: dict) -> Optional[str]:
    """What is wrong with a weights file's contents (None when nothing): a key missing or of the
    wrong type, a generator part missing, a module that is not a mapping of tensors."""
    for key, kind in LAYOUT.items():
        if not isinstance(content.get(key), kind):
            found = "missing" if key not in content else type(content[key]).__name__
            return f"'{key}' is {found}, not a {kind.__name__}"
    modules = content["modules"]
    missing = [part for part in GAN_PARTS if part not in modules]
    if missing:
        return f"no {', '.join(missing)} in 'modules'"
    for name, state in modules.items():
        if not isinstance(state, dict) or not all(torch.is_tensor(t) for t in state.values()):
            return f"module '{name}' is not a state dict of tensors"
    if "cb" in modules and not isinstance(content.get("cb_network"), dict):
        return "a Cb without its 'cb_network' section"
    return None


def half(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Floating tensors of a state dict in fp16 (contiguous copies), others unchanged."""
    return {k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.detach().clone()
            for k, v in state.items()}


def full(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """fp16 tensors of a state dict back in fp32."""
    return {k: v.float() if v.dtype == torch.float16 else v for k, v in state.items()}


def part(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix.``, without it (a submodule's state dict)."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


# -- export ------------------------------------------------------------------------------------
def _run_folder_weights(folder: Path) -> tuple:
    """(state dict of the run's module 'net', history, steps, finished) from final.ckpt, or from
    last.ckpt of an unfinished run (a snapshot)."""
    if (folder / "final.ckpt").is_file():
        final = load_checkpoint(folder / "final.ckpt")
        history = final.get("history", [])
        return final["modules"]["net"], history, int((history or [{}])[-1].get("step", 0)), True
    if (folder / "last.ckpt").is_file():
        last = load_checkpoint(folder / "last.ckpt")
        return last["trainer"]["net"], last["history"], int(last["trainer"].get("step", 0)), False
    raise UserError(f"{folder} holds neither final.ckpt nor last.ckpt: give the run folder of a trained model "
                    "(checkpoints/<benchmark>-moodcat_gan-<hash>)")


def _run_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found: give a run folder written by training (it records the config there)")
    return json.loads(path.read_text())


#: the config section that tells each kind of run folder apart, and the kind's folder name
RUN_KINDS = {"gan_network": ("MOODCAT generator", "moodcat_gan"), "cb_network": ("Cb", "moodcat_cb"),
             "network": ("classifier", "base")}


def _run_config_of(folder: Path, section: str) -> dict:
    """``folder``'s run config, after a one-line error if it is another kind of run than ``section``'s."""
    config = _run_config(folder)
    if section not in config:
        wanted, name = RUN_KINDS[section]
        found = next((kind for key, (kind, _) in RUN_KINDS.items() if key in config), "unknown")
        raise UserError(f"{folder} is a {found} run, not a {wanted} run: give a "
                        f"checkpoints/<benchmark>-{name}-<hash> folder")
    return config


def _gan_source(source: Path) -> dict:
    """What the export takes from the generator: a run folder or an exported weights file."""
    if source.is_file():
        content = load_weights(source)
        return {"benchmark": content["benchmark"], "num_classes": content["num_classes"],
                "gan_network": content["gan_network"], "modules": {p: content["modules"][p] for p in GAN_PARTS},
                "identity": _gan_identity(source),
                "provenance": {k: v for k, v in content["provenance"].items() if not k.startswith("cb")}}
    config = _run_config_of(source, "gan_network")
    state, history, steps, finished = _run_folder_weights(source)
    batch = int(config["gan"]["batch_size"])
    embedding = state.get("decoder.shared_embedding.weight")  # absent in the unconditional ablation
    num_classes = None if embedding is None else int(embedding.shape[0])
    return {"benchmark": config["benchmark"], "num_classes": num_classes, "gan_network": config["gan_network"],
            "modules": {p: half(part(state, p)) for p in GAN_PARTS}, "identity": config,
            "provenance": {"gan_run": source.name, "gan_finished": finished, "gan_steps": steps,
                           "gan_batch_size": batch, "images_seen": steps * batch,
                           "gan_seconds": round(sum(h.get("seconds", 0.0) for h in history), 1),
                           "gan_config": config["gan"]}}


def _cb_source(folder: Path, gan_identity: dict) -> dict:
    config = _run_config_of(folder, "cb_network")
    if config["cb_network"].get("name", "moodcat_cb") != "moodcat_cb":
        raise UserError(f"{folder} trained a {config['cb_network'].get('name')} Cb; only the paper's moodcat_cb is shipped")
    if config.get("variant") != "cb":
        raise UserError(f"{folder} is a {config.get('variant')} run; only the paper's Cb (variant cb) is shipped")
    if config.get("gan") != gan_identity:
        raise UserError(f"the Cb in {folder} was trained on another generator than the one exported (its config.json "
                        "'gan' differs): give the Cb run folder of this generator")
    state, history, steps, finished = _run_folder_weights(folder)
    if not finished:
        raise UserError(f"the Cb run {folder} is unfinished (no final.ckpt): finish its training first")
    return {"cb_network": config["cb_network"], "state": half(state),
            "num_classes": int(state["embed.parametrizations.weight.original"].shape[0]),
            "provenance": {"cb_run": folder.name, "cb_steps": steps,
                           "cb_val_acc": (history or [{}])[-1].get("val_acc"), "cb_config": config["cb"]}}


def find_cb_run(gan: Path | str, checkpoints: Optional[Path | str] = None) -> Path:
    """The Cb run folder (variant cb) trained on the generator ``gan`` (a run folder or weights
    file), searched in ``checkpoints`` (default: beside a run folder; for a weights file
    ``results/checkpoints`` of the working folder, the CLI's default)."""
    gan = Path(gan)
    identity = _gan_identity(gan)
    root = Path(checkpoints) if checkpoints else gan.parent if gan.is_dir() else Path("results") / "checkpoints"
    matches = [folder for folder in sorted(root.glob("*-moodcat_cb-*"))
               if (folder / "config.json").is_file() and _run_config(folder).get("gan") == identity
               and _run_config(folder).get("variant") == "cb"]
    if len(matches) != 1:
        found = "none" if not matches else ", ".join(m.name for m in matches)
        raise UserError(f"looked for the Cb run of {gan} in {root} and found {found}: name it with --cb FOLDER")
    return matches[0]


def _gan_identity(gan: Path) -> dict:
    """What a Cb run's config.json records as its generator ('gan')."""
    if gan.is_file():
        return {"benchmark": load_weights(gan)["benchmark"], "pretrained_sha256": sha256_of(gan)}
    return _run_config(gan)


def current_commit() -> Optional[str]:
    """HEAD of the git checkout holding this package, or None."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def export_weights(gan: Path | str, out: Path | str, cb: Optional[Path | str] = None,
                   notes: Optional[Dict[str, Any]] = None) -> dict:
    """Write the weights file ``out`` (fp16 encoder + decoder [+ Cb]) and record it in the
    ``MANIFEST.json`` beside it; returns its manifest entry.

    ``gan``: a generator run folder (``final.ckpt``, or ``last.ckpt`` of an unfinished run) or a
    weights file; ``cb``: the run folder of a Cb trained on exactly that generator (its
    ``config.json`` says so). ``notes``: extra provenance (e.g. the commit the run was trained
    with, the GPU and its minutes), stored in the file and the manifest.
    """
    out = Path(out)
    source = _gan_source(Path(gan))
    modules = dict(source["modules"])
    provenance = {**source["provenance"], "exported": datetime.datetime.now().isoformat(timespec="seconds"),
                  "exported_with_commit": current_commit(), **(notes or {})}
    cb_network = None
    if cb is not None:
        cb_part = _cb_source(Path(cb), source["identity"])
        modules["cb"], cb_network = cb_part["state"], cb_part["cb_network"]
        provenance.update(cb_part["provenance"])
        source["num_classes"] = source["num_classes"] or cb_part["num_classes"]
    if source["num_classes"] is None:
        raise UserError("the number of classes cannot be read from an unconditional generator alone: export it "
                        "together with its Cb (--cb)")
    atomic_torch_save({"format": FORMAT, "benchmark": source["benchmark"], "num_classes": source["num_classes"],
                       "gan_network": source["gan_network"], "cb_network": cb_network, "modules": modules,
                       "provenance": provenance}, out)
    entry = {"sha256": sha256_of(out), "bytes": out.stat().st_size, "benchmark": source["benchmark"],
             "parts": sorted(modules), **provenance}
    manifest = read_manifest(out.parent)
    manifest.pop("status", None)  # the placeholder sentence goes once a file is listed
    manifest["files"][out.name] = entry
    atomic_write_json(manifest, out.parent / MANIFEST)
    return entry


# -- scoring with a weights file (the ``pretrained:`` section) -----------------------------------
def checked_pretrained(config, num_classes: int, use_ema: bool) -> Optional[dict]:
    """The verified contents of the run's ``pretrained.file`` (None without one), plus its
    ``path`` and ``sha256``; one-line errors for a missing, damaged or unlisted file, another
    benchmark's weights, or EMA scoring. A Cb of another network than the config's
    ``cb_network`` is dropped from ``modules`` (it is trained on the file's generator instead)."""
    name = (config.get("pretrained") or {}).get("file")
    if not name:
        return None
    path = locate(name)
    content = load_weights(path)
    benchmark, classes = config.dataset.name, num_classes
    if content["benchmark"] != benchmark or int(content["num_classes"]) != classes:
        raise ConfigError(f"pretrained weights {path} were trained on {content['benchmark']} "
                          f"({content['num_classes']} classes), this run is {benchmark} ({classes} classes): use "
                          f"the file for {benchmark} (see {path.parent / MANIFEST}) or drop --pretrained")
    if use_ema:
        raise ConfigError(f"pretrained weights {path} hold no EMA decoder: set postprocessor_args.use_ema=false")
    modules = dict(content["modules"])
    wanted = cb_network_name(config.cb_network)
    if "cb" in modules and cb_network_name(content["cb_network"]) != wanted:  # another method's Cb
        log.info("the Cb in %s is a '%s', this method's is a '%s': training it on the file's generator",
                 path, cb_network_name(content["cb_network"]), wanted)
        del modules["cb"]
    return {**content, "modules": modules, "path": path, "sha256": sha256_of(path)}


def pretrained_info(pretrained: dict, *keys: str) -> dict:
    """The ``training_info`` entry of a part loaded from ``pretrained`` (:func:`checked_pretrained`)."""
    provenance = pretrained["provenance"]
    return {"pretrained": str(pretrained["path"]), "sha256": pretrained["sha256"], "cached": True,
            **{k: provenance[k] for k in keys if provenance.get(k) is not None}}


def pretrained_gan(pretrained: dict, num_classes: int, benchmark: str, device):
    """(frozen generator with the file's encoder and decoder, cache identity for Cbs trained on
    it, its ``training_info`` entry)."""
    section = pretrained["gan_network"]
    kwargs = {k: v for k, v in section.items() if k not in ("name", "checkpoint")}
    gan = NETWORKS.get(section.get("name", "moodcat_gan"))(num_classes=num_classes, **kwargs)
    for part in ("encoder", "decoder"):
        load_state_dict_strict(getattr(gan, part), full(pretrained["modules"][part]),
                               f"the {part} in {pretrained['path']}")
    gan.decoder_ema.load_state_dict(gan.decoder.state_dict())
    info = pretrained_info(pretrained, "images_seen", "gan_steps")
    gan_key = {"benchmark": benchmark, "pretrained_sha256": pretrained["sha256"]}
    return gan.to(device).eval().requires_grad_(False), gan_key, info


def pretrained_cb(pretrained: dict, num_classes: int, device):
    """(frozen Cb of the file, its ``training_info`` entry)."""
    section = pretrained["cb_network"]
    kwargs = {k: v for k, v in section.items() if k not in ("name", "checkpoint")}
    cb = NETWORKS.get(cb_network_name(section))(num_classes=num_classes, **kwargs)
    load_state_dict_strict(cb, full(pretrained["modules"]["cb"]), f"the Cb in {pretrained['path']}")
    info = pretrained_info(pretrained, "cb_steps")
    if pretrained["provenance"].get("cb_val_acc") is not None:
        info["val_acc"] = pretrained["provenance"]["cb_val_acc"]
    return cb.to(device).eval().requires_grad_(False), info
