"""Import the MOODCAT weights the authors released (cure-lab/MOODCat) into our weights format.

The authors' Google Drive folder (linked from their README and issue #1) holds, per benchmark:

* ``ckpt/<set>_ind/G_ep_<N>.pth`` -- the generator (decoder), a plain state dict in
  BigGAN-PyTorch layout: spectral-norm layers keep ``weight``, ``u0`` ``[1,out]`` and ``sv0``
  ``[1]`` (logged only); batch norms keep ``stored_mean``/``stored_var``; ``shared.weight``
  ``[C,128]`` is the class embedding. ``G_ema_<N>.pth`` is the EMA copy (the paper evaluated the
  non-EMA one; both import, the manifest says which);
* ``ckpt/<set>_ind/E_ep_<N>.pth`` -- the encoder, a plain state dict (18 entries);
* ``ckpt/<set>_ind/discriminator_cat6_*/acc=...pth`` -- a Cb: a dict whose ``state_dict`` uses
  torch's hook-based spectral norm (``weight_orig``, ``weight_u``, ``weight_v``).

A ``module.`` prefix (``nn.DataParallel``) is dropped. Every file is read weights-only
(``torch.load(weights_only=True)``): a file that needs code to be unpickled is refused with one
line and nothing in it runs. Every tensor's shape is checked against our networks before
anything is written.

Conversion (proved output-equal to the authors' code in eval mode by
``tests/test_authors_weights.py``, fp32, 10 and 100 classes):

* generator SN: the reference's eval forward runs one non-updating power step from ``u0``
  (``v = normalize(u0 W)``, ``u = normalize(v W^T)``) and divides by ``sigma = v W^T u^T``; we
  store that ``(u, v)`` as torch's parametrization vectors, whose eval forward uses
  ``sigma = u . (W v)`` -- the same number, computed once here instead of per call;
* Cb SN vectors are copied as they are (torch's eval forward uses them without iterating). The
  authors ran their Cb in train mode, which first does one power step (changes ~1e-6 on converged
  vectors); we score in eval mode;
* the Cb's attention gain ``sigma`` ``[1]`` becomes our scalar ``gamma``; the Cb is built with
  ``relu_shortcut=True`` (see :class:`~moodcat_plugin.networks.moodcat_layers.DownResBlock`).

Where scoring still differs from the authors' evaluation (deliberately): we use ``z = mu``, they
sample ``z = mu + exp(logvar/2) * eps`` (the test covers both); their test mask is one rectangle per
batch, ours one per image; ``--protocol authors`` reproduces their labels (ID true, OOD random).
"""
from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from moodcat_plugin.errors import CheckpointError, UserError
from moodcat_plugin.moodcat import weights as shipped_weights
from moodcat_plugin.utils import atomic_torch_save, atomic_write_json

GAN_NETWORK = {"name": "moodcat_gan", "ch": 32, "latent_dim": 128, "disc_ch": 32, "conditional": True}
CB_NETWORK = {"name": "moodcat_cb", "ch": 64, "relu_shortcut": True}
BENCHMARK_OF_CLASSES = {10: "cifar10", 100: "cifar100"}  # the two sets the authors released weights for
GENERATOR_SN_EPS = 1e-8  # the authors' parser default (--SN_eps), used by their eval power step
DOWNLOAD_HINT = ("download it again from the authors' Google Drive folder (cure-lab/MOODCat README, "
                 "ckpt/<benchmark>_ind/)")

# reference key (regex) -> ours, applied in order; "\\1" etc. keep block indices
_ENCODER_RULES = [
    (r"encoder\.initial-conv-3-32\.", "features.0."),
    (r"encoder\.pyramid-32-64\.", "features.2."),
    (r"encoder\.pyramid-64-batchnorm\.", "features.3."),
    (r"encoder\.pyramid-64-128\.", "features.5."),
    (r"encoder\.pyramid-128-batchnorm\.", "features.6."),
    (r"encoder\.final-128-1-conv\.", "features.8."),
    (r"z_mean_calc\.", "mu_head."),
    (r"z_log_var_calc\.", "logvar_head."),
]
_DECODER_RULES = [
    (r"shared\.", "shared_embedding."),
    (r"blocks\.(\d+)\.0\.conv_sc\.", r"blocks.\1.shortcut."),
    (r"blocks\.(\d+)\.0\.bn(\d)\.stored_(mean|var)", r"blocks.\1.norm\2.bn.running_\3"),
    (r"blocks\.(\d+)\.0\.bn(\d)\.", r"blocks.\1.norm\2."),
    (r"blocks\.(\d+)\.0\.", r"blocks.\1."),
    (r"output_layer\.0\.gain", "output_bn.weight"),
    (r"output_layer\.0\.bias", "output_bn.bias"),
    (r"output_layer\.0\.stored_(mean|var)", r"output_bn.running_\1"),
    (r"output_layer\.2\.", "output_conv."),
]
_CB_RULES = [
    (r"blocks\.0\.0\.conv2d0\.", "blocks.0.shortcut."),
    (r"blocks\.1\.0\.sigma$", "blocks.1.gamma"),
    (r"blocks\.1\.0\.conv1x1_(theta|phi|g)\.", r"blocks.1.\1."),
    (r"blocks\.1\.0\.conv1x1_attn\.", "blocks.1.o."),
    (r"blocks\.(\d+)\.0\.conv2d0\.", r"blocks.\1.shortcut."),
    (r"blocks\.(\d+)\.0\.conv2d(\d)\.", r"blocks.\1.conv\2."),
    (r"linear1\.", "linear."),
    (r"embedding\.", "embed."),
    (r"\.weight_orig$", ".parametrizations.weight.original"),
    (r"\.weight_u$", ".parametrizations.weight.0._u"),
    (r"\.weight_v$", ".parametrizations.weight.0._v"),
]


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


# -- reading -----------------------------------------------------------------------------------
def read_reference_file(path: Path | str) -> Dict[str, torch.Tensor]:
    """The tensors of one of the authors' files (``state_dict`` of a Cb dict taken, ``module.``
    dropped), read weights-only; one-line errors for a missing, truncated or code-carrying file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found; {DOWNLOAD_HINT}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise CheckpointError(_load_failure(path, exc)) from exc
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise CheckpointError(f"{path} is not a state dict (a dict of tensors, or a dict with one under "
                              f"'state_dict'); give one of the authors' G_/E_/discriminator files")
    return {k.removeprefix("module."): v for k, v in content.items()}


def _load_failure(path: Path, exc: Exception) -> str:
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if code or "weights_only" in text.lower() or "weights only" in text.lower():
        needs = f"it names {code.group(1)}" if code else text[:120]
        return (f"{path} needs code to be unpickled ({needs}); refused, nothing in it was run: re-save its tensors "
                "with torch.save(state_dict) on a trusted machine, or download the original again")
    return f"{path} cannot be read (truncated or not a torch file: {type(exc).__name__}: {text[:100]}); {DOWNLOAD_HINT}"


# -- converting --------------------------------------------------------------------------------
def _generator_sn_vectors(weight: torch.Tensor, u0: torch.Tensor):
    """(u, v) that make torch's eval-mode ``u.(W v)`` equal the reference's eval sigma."""
    matrix = weight.reshape(weight.shape[0], -1).double()
    v = F.normalize(u0.reshape(1, -1).double() @ matrix, eps=GENERATOR_SN_EPS)
    u = F.normalize(v @ matrix.t(), eps=GENERATOR_SN_EPS)
    return u[0].float(), v[0].float()


def convert_encoder(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' ``Encoder`` state dict -> our ``MoodcatEncoder`` keys (values unchanged)."""
    return {_rename(k, _ENCODER_RULES): v for k, v in state.items()}


def convert_decoder(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' BigGAN ``Generator`` state dict -> our ``BigGANDecoder`` keys, with the
    spectral-norm ``u0`` turned into parametrization vectors and ``num_batches_tracked`` added."""
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((".u0", ".sv0")):
            continue
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        if stem is not None and stem + ".u0" in state:
            ours = _rename(stem + ".", _DECODER_RULES)
            out[ours + "parametrizations.weight.original"] = value
            out[ours + "parametrizations.weight.0._u"], out[ours + "parametrizations.weight.0._v"] = \
                _generator_sn_vectors(value, state[stem + ".u0"])
            continue
        ours = _rename(key, _DECODER_RULES)
        out[ours] = value
        if ours.endswith("running_var"):
            out[ours[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return out


def convert_cb(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' ``Dis_ood.Discriminator`` ("cat6") state dict -> our ``moodcat_cb`` keys."""
    out = {_rename(k, _CB_RULES): v for k, v in state.items()}
    if "blocks.1.gamma" in out:
        out["blocks.1.gamma"] = out["blocks.1.gamma"].reshape(())
    return out


# -- checking ----------------------------------------------------------------------------------
def _class_count(state: Dict[str, torch.Tensor], key: str) -> Optional[int]:
    return int(state[key].shape[0]) if key in state else None


def _benchmarks_named_in(path: Path) -> set:
    return {"cifar" + m for m in re.findall(r"cifar[-_]?(100|10)(?!\d)", str(path).lower())}


def check_source(path: Path, state: Dict[str, torch.Tensor], what: str, benchmark: str, classes: int) -> None:
    """One-line errors: a file of another benchmark (by its class count or its path)."""
    found = _class_count(state, {"generator": "shared.weight", "cb": "embedding.weight_orig"}.get(what, ""))
    if found is not None and found != classes:
        other = BENCHMARK_OF_CLASSES.get(found, f"a {found}-class benchmark")
        raise UserError(f"{path} is a {found}-class {what} ({other}), but --benchmark {benchmark} has {classes} "
                        f"classes: give the {benchmark} file (ckpt/{benchmark}_ind/...) or --benchmark {other}")
    named = _benchmarks_named_in(path)
    if named and not any(benchmark.startswith(name) and not benchmark.startswith(name + "0") for name in named):
        raise UserError(f"{path} is named after {', '.join(sorted(named))}, not {benchmark}: give the {benchmark} "
                        f"file (ckpt/{benchmark}_ind/...), or rename it if it really is {benchmark}'s")


def _match_network(path: Path, converted: Dict[str, torch.Tensor], module: torch.nn.Module, what: str) -> None:
    """Every key and shape of ``converted`` equals ``module``'s state dict, else one line."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    wrong = [f"{k} {tuple(converted[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in converted and converted[k].shape != v.shape]
    if missing or unexpected or wrong:
        detail = "; ".join(filter(None, [missing and f"missing {missing[:3]}", unexpected and f"unexpected {unexpected[:3]}",
                                         wrong and f"shape {wrong[:2]}"]))
        raise CheckpointError(f"{path} is not the authors' {what} at paper size ({detail}); give the "
                              f"{_FILE_NAMES[what]} file")


_FILE_NAMES = {"encoder": "E_ep_<N>.pth", "generator": "G_ep_<N>.pth",
               "cb": "discriminator_cat6_*/acc=...pth"}


def _epoch(path: Path) -> Optional[str]:
    found = re.search(r"_ep_(\d+)", path.name)
    return found.group(1) if found else None


def generator_kind(path: Path) -> str:
    """What a generator file is, by the authors' naming: the non-EMA or the EMA decoder."""
    return "EMA generator (G_ema_*; the paper evaluated the non-EMA one)" if "ema" in path.name.lower() else \
        "non-EMA generator (G_ep_*, as the paper evaluated)"


# -- importing ---------------------------------------------------------------------------------
def import_authors_weights(benchmark: str, num_classes: int, encoder: Path | str, generator: Path | str,
                           out: Path | str, cb: Optional[Path | str] = None, notes: Optional[dict] = None) -> dict:
    """Convert the authors' E, G [and Cb] files into our weights file ``out`` for ``benchmark``
    (``num_classes`` classes; cifar10 / cifar100 and their SC-OOD variants for the released files)
    in fp32 (the import is exact), and record it in the ``MANIFEST.json`` beside it with each
    source file's sha256 and what it is. Returns the manifest entry. Nothing is written on any error."""
    from moodcat_plugin.networks.conditional_binary_classifier import ConditionalBinaryClassifier
    from moodcat_plugin.networks.moodcat_gan import MoodcatGAN

    classes = int(num_classes)
    paths = {"encoder": Path(encoder), "generator": Path(generator), **({"cb": Path(cb)} if cb else {})}
    epochs = {_epoch(paths["encoder"]), _epoch(paths["generator"])}
    if None not in epochs and len(epochs) > 1:
        raise UserError(f"{paths['encoder']} and {paths['generator']} come from different epochs; give the E_ and G_ "
                        "files of one checkpoint (same _ep_<N>)")
    gan = MoodcatGAN(classes, **{k: v for k, v in GAN_NETWORK.items() if k != "name"})
    targets = {"encoder": (gan.encoder, convert_encoder), "generator": (gan.decoder, convert_decoder)}
    if cb:
        targets["cb"] = (ConditionalBinaryClassifier(classes, ch=CB_NETWORK["ch"], relu_shortcut=True), convert_cb)
    modules, sources = {}, {}
    for what, (module, convert) in targets.items():
        path = paths[what]
        state = read_reference_file(path)
        check_source(path, state, what, benchmark, classes)
        converted = convert(state)
        _match_network(path, converted, module, what)
        modules["decoder" if what == "generator" else what] = {k: v.detach().float().contiguous()
                                                               if v.is_floating_point() else v.clone()
                                                               for k, v in converted.items()}
        sources[what] = {"file": path.name, "sha256": shipped_weights.sha256_of(path),
                         "is": generator_kind(path) if what == "generator" else _WHAT[what]}
    provenance = {"source": "authors' released weights (cure-lab/MOODCat), imported by "
                            "scripts/import_moodcat_weights.py", "authors_files": sources,
                  "imported": datetime.datetime.now().isoformat(timespec="seconds"),
                  "imported_with_commit": shipped_weights.current_commit(), **(notes or {})}
    accuracy = re.search(r"acc=(\d+\.\d+)\.pth$", paths["cb"].name) if cb else None
    if accuracy:  # the authors' binary accuracy, from their file name (their Cb training code is not public)
        provenance["cb_val_acc"] = float(accuracy.group(1))
    return _write(Path(out), benchmark, classes, modules, provenance, with_cb=bool(cb))


_WHAT = {"encoder": "encoder (E_ep_*)", "cb": "Cb, the 'cat6' conditional binary classifier (discriminator_cat6_*)"}


def _write(out: Path, benchmark: str, classes: int, modules: dict, provenance: dict, with_cb: bool) -> dict:
    atomic_torch_save({"format": shipped_weights.FORMAT, "benchmark": benchmark, "num_classes": classes,
                       "gan_network": dict(GAN_NETWORK), "cb_network": dict(CB_NETWORK) if with_cb else None,
                       "modules": modules, "provenance": provenance}, out)
    entry = {"sha256": shipped_weights.sha256_of(out), "bytes": out.stat().st_size, "benchmark": benchmark,
             "parts": sorted(modules), **provenance}
    manifest = shipped_weights.read_manifest(out.parent)
    manifest.pop("status", None)
    manifest["files"][out.name] = entry
    atomic_write_json(manifest, out.parent / shipped_weights.MANIFEST)
    return entry

