"""Unsupervised Dual Grouping (Yang et al., ICCV 2021), registered as trainer ``udg``.

UDG trains on labelled ID data plus an unlabeled set (our outlier set) that may hold ID-like and
OOD images. At the start of every epoch it groups all training images:

1. penultimate features ``net(x, return_feature=True)`` of ID train + unlabeled images, without
   augmentation (N_total x D);
2. PCA to ``min(pca_dim, D)`` dimensions (256 in the reference) with whitening, then L2
   normalisation (directions whose variance is ~0, e.g. dead ReLU channels, are dropped so
   whitening does not blow up noise);
3. k-means into k clusters (scikit-learn ``KMeans``, ``MiniBatchKMeans`` above
   ``kmeans_minibatch_above`` samples). ``num_clusters: auto`` uses
   ``k = clip(round(N_total / 100), 10, 1000)``: the reference 1000 clusters for 50k + 300k
   CIFAR/Tiny-ImageNet images is ~350 images per cluster, capped; ~100 per cluster keeps small
   sets (the demo: 649 + 800 -> 14) from collapsing into a handful of clusters;
4. cluster purity, over all members of a cluster: when one ID class holds >=
   ``purity_ind_thresh`` (0.8) of the members, the unlabeled members take that class label
   (ID filtering: they leave the outlier term); every other unlabeled image stays an outlier,
   pushed to uniform outputs with weight 1, and with weight ``oe_enhance_ratio`` (2.0) when
   unlabeled images make up >= ``purity_ood_thresh`` (0.8) of its cluster (OOD-cluster
   enhancement). Purity counts the true ID labels only (OpenOOD also counts last epoch's
   propagated labels; its enhancement branch is unreachable when both thresholds are 0.8, ours is
   not).

Loss per step, one concatenated forward of the ID batch and an unlabeled batch::

    CE(class logits, ID labels + propagated labels)
    + lambda_oe (0.5) * mean over unpropagated unlabeled samples of w * CE(class logits, uniform)
    + lambda_aux (0.1) * mean of v * CE(auxiliary cluster logits, cluster id), every sample

with w in {1, oe_enhance_ratio} as above and v = size^-1/2 of the sample's cluster, scaled to mean
1 over the non-empty clusters (small clusters count more, as in the reference). The auxiliary
head (``resnet18_32x32_udg``'s ``fc_aux``) is re-initialised after every clustering, as cluster
ids change meaning. Evaluated with MSP on the class logits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from moodcat_plugin.errors import ConfigError
from moodcat_plugin.registry import register_trainer
from moodcat_plugin.schema import choice, either, integer, number
from moodcat_plugin.trainers.base_trainer import batch_to
from moodcat_plugin.trainers.oe_trainer import OutlierTrainerBase, OutlierTrainerConfig, uniform_cross_entropy

SAMPLES_PER_CLUSTER = 100
MIN_CLUSTERS, MAX_CLUSTERS = 10, 1000


def number_of_clusters(n_total: int, setting="auto") -> int:
    """k for ``n_total`` images: an int setting as given, ``auto`` -> clip(round(N/100), 10, 1000);
    never more than ``n_total``."""
    if setting == "auto":
        k = int(np.clip(round(n_total / SAMPLES_PER_CLUSTER), MIN_CLUSTERS, MAX_CLUSTERS))
    elif isinstance(setting, int) and setting >= 2:
        k = setting
    else:
        raise ConfigError(f"trainer.num_clusters must be 'auto' or an integer >= 2, got {setting!r}")
    return max(1, min(k, n_total))


def whitened_features(features: np.ndarray, pca_dim: int = 256) -> np.ndarray:
    """PCA-whiten to min(pca_dim, D, N) dims and L2-normalise: (N, D) -> (N, d), unit rows.

    Components with variance below 1e-6 of the largest are dropped; if nothing usable is left
    (constant features), the L2-normalised raw features are returned instead.
    """
    from sklearn.decomposition import PCA

    features = np.asarray(features, dtype=np.float64)
    n, dim = features.shape
    n_components = max(1, min(pca_dim, dim, n))
    pca = PCA(n_components=n_components, whiten=True, random_state=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        reduced = pca.fit_transform(features)
    variance = pca.explained_variance_
    keep = variance > 1e-6 * max(float(variance.max(initial=0.0)), 1e-30)
    reduced = reduced[:, keep]
    if reduced.shape[1] == 0 or not np.isfinite(reduced).all():
        reduced = features
    norms = np.linalg.norm(reduced, axis=1, keepdims=True)
    return reduced / np.maximum(norms, 1e-12)


def kmeans_cluster_ids(points: np.ndarray, k: int, seed: int, iters: int = 20,
                       minibatch_above: int = 50000) -> np.ndarray:
    """k-means cluster id per row: (N, d) -> (N,) int64 in [0, k)."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if len(points) > minibatch_above:
        model = MiniBatchKMeans(n_clusters=k, batch_size=4096, max_iter=iters, n_init=1, random_state=seed)
    else:
        model = KMeans(n_clusters=k, max_iter=iters, n_init=1, random_state=seed)
    return model.fit_predict(points.astype(np.float32)).astype(np.int64)


def assign_cluster_targets(cluster_id: np.ndarray, labels: np.ndarray, num_clusters: int,
                           purity_ind_thresh: float = 0.8, purity_ood_thresh: float = 0.8
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """Cluster purity -> (targets, in_ood_cluster), both (N,).

    cluster_id: (N,) ints in [0, num_clusters); labels: (N,) class ids for ID samples, -1 for
    unlabeled ones. targets: the ID label for ID samples, the propagated class for unlabeled
    members of ID-pure clusters (one class >= purity_ind_thresh of all members), else -1.
    in_ood_cluster: True for unlabeled members of clusters whose unlabeled share >=
    purity_ood_thresh (the enhanced outliers).
    """
    cluster_id = np.asarray(cluster_id, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    unlabeled = labels < 0
    num_classes = int(labels.max(initial=-1)) + 1
    size = np.bincount(cluster_id, minlength=num_clusters).astype(np.float64)
    safe_size = np.maximum(size, 1.0)
    class_counts = np.zeros((num_clusters, max(1, num_classes)))
    np.add.at(class_counts, (cluster_id[~unlabeled], labels[~unlabeled]), 1.0)
    majority_class = class_counts.argmax(axis=1)
    id_pure = class_counts.max(axis=1) / safe_size >= purity_ind_thresh
    id_pure &= class_counts.max(axis=1) > 0
    unlabeled_share = np.bincount(cluster_id[unlabeled], minlength=num_clusters) / safe_size
    ood_pure = (unlabeled_share >= purity_ood_thresh) & ~id_pure & (size > 0)

    targets = labels.copy()
    propagate = unlabeled & id_pure[cluster_id]
    targets[propagate] = majority_class[cluster_id[propagate]]
    is_ood = unlabeled & ood_pure[cluster_id]
    return targets, is_ood


def outlier_weights(targets: np.ndarray, in_ood_cluster: np.ndarray, enhance_ratio: float) -> np.ndarray:
    """Weight of each unlabeled sample in the outlier (uniform-CE) term, (N,) -> (N,) floats:
    0 when it took a class label, ``enhance_ratio`` in an OOD cluster, else 1."""
    weights = np.where(in_ood_cluster, float(enhance_ratio), 1.0)
    return np.where(np.asarray(targets) >= 0, 0.0, weights)


def cluster_weights(cluster_id: np.ndarray, num_clusters: int) -> np.ndarray:
    """Per-cluster weight size^-1/2 scaled to mean 1 over non-empty clusters, (num_clusters,);
    empty clusters get 0."""
    size = np.bincount(cluster_id, minlength=num_clusters).astype(np.float64)
    weights = np.where(size > 0, 1.0 / np.sqrt(np.maximum(size, 1.0)), 0.0)
    return weights / weights[size > 0].mean()


@dataclass
class ClusterState:
    """Per-sample targets of one epoch, indexed by the loaders' ``index``: ID and unlabeled parts."""

    id_cluster: torch.Tensor              # (N_id,) int64
    unlabeled_target: torch.Tensor        # (N_unl,) int64, -1 = no class target
    unlabeled_oe_weight: torch.Tensor     # (N_unl,) float: 0 (labelled), 1, or oe_enhance_ratio
    unlabeled_cluster: torch.Tensor       # (N_unl,) int64
    cluster_weight: torch.Tensor          # (num_clusters,) float, aux-loss weight per cluster


class UDGConfig(OutlierTrainerConfig):
    num_clusters: either(choice("auto"), integer(ge=2)) = "auto"
    pca_dim: integer(ge=1) = 256
    purity_ind_thresh: number(gt=0, le=1) = 0.8
    purity_ood_thresh: number(gt=0, le=1) = 0.8
    oe_enhance_ratio: number(ge=0) = 2.0
    lambda_oe: number(ge=0) = 0.5
    lambda_aux: number(ge=0) = 0.1
    kmeans_iters: integer(ge=1) = 20
    kmeans_minibatch_above: integer(ge=1) = 50000


@register_trainer("udg")
class UDGTrainer(OutlierTrainerBase):
    """Per-epoch clustering, then CE + lambda_oe * uniform-CE on unlabeled images left without a class
    (x oe_enhance_ratio in OOD clusters) + lambda_aux * cluster CE.

    config.trainer: classifier recipe plus ``num_clusters`` ('auto' or int), ``pca_dim`` (256),
    ``purity_ind_thresh`` (0.8), ``purity_ood_thresh`` (0.8), ``oe_enhance_ratio`` (2.0),
    ``lambda_oe`` (0.5), ``lambda_aux`` (0.1), ``kmeans_iters`` (20), ``kmeans_minibatch_above`` (50000).
    The network must have an auxiliary head: ``resnet18_32x32_udg``.
    """

    config_schema = UDGConfig

    def __init__(self, net, train_loader, train_unlabeled_loader, config):
        if not hasattr(net, "reset_cluster_head"):
            raise ConfigError(f"trainer 'udg' needs a network with an auxiliary cluster head (resnet18_32x32_udg), "
                              f"got {type(net).__name__}; set network.name: resnet18_32x32_udg "
                              "(configs/postprocessors/udg.yml does)")
        cfg = config.trainer
        n_total = len(train_loader.dataset) + len(train_unlabeled_loader.dataset)
        self.num_clusters = number_of_clusters(n_total, cfg.get("num_clusters", "auto"))
        net.reset_cluster_head(self.num_clusters)  # before the optimiser collects the parameters
        super().__init__(net, train_loader, train_unlabeled_loader, config)
        self.pca_dim = int(cfg.get("pca_dim", 256))
        self.purity_ind_thresh = float(cfg.get("purity_ind_thresh", 0.8))
        self.purity_ood_thresh = float(cfg.get("purity_ood_thresh", 0.8))
        self.oe_enhance_ratio = float(cfg.get("oe_enhance_ratio", 2.0))
        self.lambda_oe = float(cfg.get("lambda_oe", 0.5))
        self.lambda_aux = float(cfg.get("lambda_aux", 0.1))
        self.kmeans_iters = int(cfg.get("kmeans_iters", 20))
        self.kmeans_minibatch_above = int(cfg.get("kmeans_minibatch_above", 50000))
        self.feature_batch_size = int(config.get("eval_batch_size", 256))
        self.seed = int(config.get("seed", 0))
        self.state: ClusterState | None = None

    # -- clustering ------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, loader) -> Tuple[np.ndarray, np.ndarray]:
        """Penultimate features (N, D) and labels (N,) of a loader's images in index order."""
        features, labels, indices = [], [], []
        for batch in loader.plain(self.feature_batch_size):
            _, feature = self.net(batch["data"].to(self.device), return_feature=True)
            features.append(feature.float().cpu())
            labels.append(batch["label"])
            indices.append(torch.as_tensor(batch["index"]))
        order = torch.cat(indices).argsort()
        return torch.cat(features)[order].numpy(), torch.cat(labels)[order].numpy()

    def run_clustering(self, epoch_idx: int) -> dict:
        """Cluster ID + unlabeled features, set ``self.state``, reset the auxiliary head."""
        self.net.eval()
        id_features, id_labels = self.extract(self.train_loader)
        unl_features, _ = self.extract(self.train_unlabeled_loader)
        n_id = len(id_features)
        points = whitened_features(np.concatenate([id_features, unl_features]), self.pca_dim)
        cluster_id = kmeans_cluster_ids(points, self.num_clusters, seed=self.seed * 1000 + epoch_idx,
                                        iters=self.kmeans_iters, minibatch_above=self.kmeans_minibatch_above)
        labels = np.concatenate([id_labels, np.full(len(unl_features), -1)])
        targets, in_ood_cluster = assign_cluster_targets(cluster_id, labels, self.num_clusters,
                                                         self.purity_ind_thresh, self.purity_ood_thresh)
        oe_weight = outlier_weights(targets[n_id:], in_ood_cluster[n_id:], self.oe_enhance_ratio)
        self.state = ClusterState(
            id_cluster=torch.from_numpy(cluster_id[:n_id]).to(self.device),
            unlabeled_target=torch.from_numpy(targets[n_id:]).to(self.device),
            unlabeled_oe_weight=torch.from_numpy(oe_weight).float().to(self.device),
            unlabeled_cluster=torch.from_numpy(cluster_id[n_id:]).to(self.device),
            cluster_weight=torch.from_numpy(cluster_weights(cluster_id, self.num_clusters)).float().to(self.device),
        )
        self.net.reset_cluster_head(self.num_clusters)
        return {"unlabeled_with_label": float((targets[n_id:] >= 0).mean()),
                "unlabeled_ood_cluster": float(in_ood_cluster[n_id:].mean())}

    # -- training --------------------------------------------------------------------------------
    def losses(self, data, labels, id_index, unl_data, unl_index):
        """(loss_cls, loss_oe, loss_aux) from one forward over the ID and unlabeled batches."""
        state = self.state
        logits, aux_logits = self.net(torch.cat([data, unl_data]), return_aux=True)
        targets = torch.cat([labels, state.unlabeled_target[unl_index]])
        labelled = targets >= 0
        loss_cls = F.cross_entropy(logits[labelled], targets[labelled])
        unl_logits, unl_targets = logits[len(labels):], state.unlabeled_target[unl_index]
        outlier = unl_targets < 0
        loss_oe = uniform_cross_entropy(unl_logits[outlier], state.unlabeled_oe_weight[unl_index][outlier])
        clusters = torch.cat([state.id_cluster[id_index], state.unlabeled_cluster[unl_index]])
        aux_per_sample = F.cross_entropy(aux_logits, clusters, reduction="none")
        loss_aux = (aux_per_sample * state.cluster_weight[clusters]).mean()
        return loss_cls, loss_oe, loss_aux

    def train_epoch(self, epoch_idx: int):
        cluster_stats = self.run_clustering(epoch_idx)
        self.net.train()
        self.outliers.start_pass(epoch_idx - 1)
        sums = {"loss": 0.0, "loss_cls": 0.0, "loss_oe": 0.0, "loss_aux": 0.0}
        seen = 0
        for batch in self.progress(self.train_loader, f"epoch {epoch_idx}"):
            data, labels = batch_to(batch, self.device)
            unl_batch = self.outliers.next()
            unl_data = unl_batch["data"].to(self.device, non_blocking=True)
            id_index = torch.as_tensor(batch["index"], device=self.device)
            unl_index = torch.as_tensor(unl_batch["index"], device=self.device)
            loss_cls, loss_oe, loss_aux = self.losses(data, labels, id_index, unl_data, unl_index)
            loss = loss_cls + self.lambda_oe * loss_oe + self.lambda_aux * loss_aux
            self.step(loss)
            for name, value in (("loss", loss), ("loss_cls", loss_cls), ("loss_oe", loss_oe), ("loss_aux", loss_aux)):
                sums[name] += value.item() * len(labels)
            seen += len(labels)
        metrics = {k: v / max(1, seen) for k, v in sums.items()}
        return self.net, {"epoch_idx": epoch_idx, **metrics, **cluster_stats, "num_clusters": self.num_clusters}
