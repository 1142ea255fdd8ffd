"""Postprocessor contract (OpenOOD's BasePostprocessor); the base class itself is MSP.

``conf`` is higher for more in-distribution inputs. Arguments come from
``config.postprocessor.postprocessor_args`` and become attributes (``self.temperature``);
``postprocessor_sweep`` lists candidate values per argument for APS (``args_dict``), in the
order ``set_hyperparam`` receives them. A postprocessor declares its arguments in
``args_schema`` and the extra sections its method file must hold in ``config_sections``
(:mod:`moodcat_plugin.schema`); the pipeline checks both when a run's config is loaded.

What a method reads is declared in one attribute, ``needs``:

- ``"logits"``: conf is a function of the classifier's logits (``postprocess_logits``);
- ``"features"``: of the logits and the penultimate features, plus what ``setup`` fitted and the
  final layer's weights (``postprocess_features``);
- ``"forward"``: the method runs networks itself (``postprocess(net, data)``): input gradients,
  altered earlier activations, other networks.

For the first two the evaluator runs the classifier once per dataset and shares its outputs
(:class:`NetworkOutputs`) between methods and APS candidates; ``setup`` reads ID train/val outputs
through ``self.outputs_of(net, loader)``, which the evaluator points at that shared cache.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

import numpy as np
import torch
from tqdm import tqdm

from moodcat_plugin.errors import ConfigError
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import NoArgs

#: The values ``needs`` may take, cheapest first.
NEEDS = ("logits", "features", "forward")


class NetworkOutputs(NamedTuple):
    """One dataset through the classifier: logits (N, C) float32, penultimate features (N, D)
    float32, labels (N,) int64, all on the CPU, in loader order."""

    logits: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def network_outputs(net, loader, device, progress: bool = False) -> NetworkOutputs:
    """Run ``net`` (``forward(x, return_feature=True)``) once over ``loader``; batches are made
    contiguous first, as OpenOOD's loaders deliver them (same bits on the same weights)."""
    net.eval()
    logits, features, labels = [], [], []
    for batch in tqdm(loader, desc=f"forward {getattr(loader, 'name', '')}", disable=not progress, leave=False):
        batch_logits, batch_features = net(batch["data"].to(device).contiguous(), return_feature=True)
        logits.append(batch_logits.cpu())
        features.append(batch_features.flatten(1).cpu())
        labels.append(batch["label"].cpu())
    return NetworkOutputs(torch.cat(logits), torch.cat(features), torch.cat(labels))


def final_layer(net) -> Tuple[np.ndarray, np.ndarray]:
    """(weight (C, D), bias (C,)) float32 numpy copies of the classifier's last layer ``net.fc``."""
    fc = getattr(net, "fc", None)
    if not isinstance(fc, torch.nn.Linear):
        raise ConfigError(f"this method reads the classifier's final layer, but network {type(net).__name__} has "
                          "no Linear attribute 'fc': use resnet18_32x32 (or a network with one)")
    return fc.weight.detach().cpu().numpy().copy(), fc.bias.detach().cpu().numpy().copy()


@register_postprocessor("msp")
class BasePostprocessor:
    """Maximum softmax probability (Hendrycks & Gimpel): conf = max_c softmax(logits)_c in (0, 1]."""

    #: What conf is computed from: "logits", "features" or "forward" (module docstring).
    needs = "logits"
    #: The data ``setup`` fits on, for listings ("ID train", "ID val"; "" = no fit).
    fits_on = ""
    #: Scores with the help of outlier data (MOODCAT's Cb(ext)); the leaderboard's "outlier data" column.
    uses_outlier_data = False
    #: Schema of ``postprocessor_args`` (MSP takes none).
    args_schema = NoArgs
    #: Sections of the method file besides postprocessor/trainer/network: name -> schema or Registered.
    config_sections: Dict[str, object] = {}
    #: Per-sample confs of named components from the last ``postprocess`` call (e.g. per scorer).
    last_components: Dict[str, torch.Tensor]

    def __init__(self, config):
        self.config = config
        section = config.postprocessor
        self.APS_mode = bool(section.get("APS_mode", False))
        self.hyperparam_search_done = False
        self.args = dict(section.get("postprocessor_args") or {})
        self.args_dict = dict(section.get("postprocessor_sweep") or {})
        for name, value in self.args.items():
            setattr(self, name, value)
        unknown = set(self.args_dict) - set(self.args)
        if unknown:
            raise ConfigError(f"postprocessor_sweep names {sorted(unknown)}, which are not in postprocessor_args "
                              f"({', '.join(self.args) or 'none'})")
        self.device = torch.device(config.device)
        self.last_components = {}

    def train(self, net, id_loader_dict) -> None:
        """Train (or load from the cache) what the method needs besides the classifier ``net``
        (MOODCAT: its generator and Cb); nothing here. Called by every process under torchrun
        before rank 0 evaluates; ``setup`` must then find the trained models in the cache."""

    def setup(self, net, id_loader_dict, ood_loader_dict) -> None:
        """Fit whatever the method needs (nothing for MSP)."""

    def set_hyperparam(self, values: List) -> None:
        for name, value in zip(self.args_dict, values):
            setattr(self, name, value)

    def get_hyperparam(self) -> List:
        return [getattr(self, name) for name in self.args_dict]

    def outputs_of(self, net, loader) -> NetworkOutputs:
        """``net``'s outputs over ``loader`` for ``setup``'s fits; the evaluator replaces this with
        its shared cache, standalone use (OpenOOD's evaluator) runs the network here."""
        return network_outputs(net, loader, self.device)

    @torch.no_grad()
    def postprocess(self, net, data: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """data (B, 3, H, W) normalised -> (pred (B,) int64, conf (B,) float)."""
        data = data.contiguous()
        if self.needs == "logits":
            return self.postprocess_logits(net(data))
        logits, features = net(data, return_feature=True)
        return self.postprocess_features(logits, features.flatten(1))

    def postprocess_features(self, logits: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """logits (B, C), penultimate features (B, D) -> (pred, conf); logit-only methods ignore features."""
        return self.postprocess_logits(logits)

    def postprocess_logits(self, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        conf, pred = torch.softmax(logits, dim=1).max(dim=1)
        return pred, conf

    def inference(self, net, data_loader, progress: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``postprocess`` over a loader -> numpy (pred, conf, label)."""
        preds, confs, labels = [], [], []
        for batch in tqdm(data_loader, desc="inference", disable=not progress, leave=False):
            pred, conf = self.postprocess(net, batch["data"].to(self.device).contiguous())
            preds.append(pred.cpu())
            confs.append(conf.cpu())
            labels.append(batch["label"])
        return torch.cat(preds).numpy(), torch.cat(confs).numpy(), torch.cat(labels).numpy()
