"""Postprocessor contract (OpenOOD's BasePostprocessor); the base class itself is MSP.

``conf`` is higher for more in-distribution inputs. Arguments come from
``config.postprocessor.postprocessor_args`` and become attributes (``self.temperature``);
``postprocessor_sweep`` lists candidate values per argument for APS (``args_dict``), in the
order ``set_hyperparam`` receives them. A postprocessor declares its arguments in
``args_schema`` and the extra sections its method file must hold in ``config_sections``
(:mod:`moodcat_plugin.schema`); the pipeline checks both when a run's config is loaded.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from tqdm import tqdm

from moodcat_plugin.errors import ConfigError
from moodcat_plugin.registry import register_postprocessor
from moodcat_plugin.schema import NoArgs


@register_postprocessor("msp")
class BasePostprocessor:
    """Maximum softmax probability (Hendrycks & Gimpel): conf = max_c softmax(logits)_c in (0, 1]."""

    #: True when conf is a function of the logits alone; the evaluator then computes each
    #: dataset's logits once and shares them between such methods (and across APS candidates).
    uses_logits_only = True
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

    @torch.no_grad()
    def postprocess(self, net, data: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """data (B, 3, H, W) normalised -> (pred (B,) int64, conf (B,) float)."""
        return self.postprocess_logits(net(data))

    def postprocess_logits(self, logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        conf, pred = torch.softmax(logits, dim=1).max(dim=1)
        return pred, conf

    def inference(self, net, data_loader, progress: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run ``postprocess`` over a loader -> numpy (pred, conf, label)."""
        preds, confs, labels = [], [], []
        for batch in tqdm(data_loader, desc="inference", disable=not progress, leave=False):
            pred, conf = self.postprocess(net, batch["data"].to(self.device))
            preds.append(pred.cpu())
            confs.append(conf.cpu())
            labels.append(batch["label"])
        return torch.cat(preds).numpy(), torch.cat(confs).numpy(), torch.cat(labels).numpy()
