"""``method=cluster_head``: PoisonCAM's clustering model as a solo-learn method.

Starts from a trained threat model (``method_kwargs.threat_checkpoint``), clusters its features of
the whole training set with k-means once, initialises a cosine cluster head from the centroids and
fine-tunes it with cross-entropy on the k-means pseudo-labels under random occlusion, so that its
activations stay meaningful on the masked images cluster activation masking feeds it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import omegaconf
import torch
import torch.nn.functional as F
from solo.methods.base import BaseMethod
from solo.utils.misc import omegaconf_select

from solo_poisoncam.checks import PoisonCamError, check
from solo_poisoncam.cluster.head import occluded_view_labels
from solo_poisoncam.cluster.kmeans import kmeans
from solo_poisoncam.engine.runner import Runner
from solo_poisoncam.losses.cluster_head import cluster_head_loss_func
from solo_poisoncam.models.heads import CosineClusterHead
from solo_poisoncam.models.threat_model import load_backbone_state, read_run_config
from solo_poisoncam.ops.occlusion import box_masks, random_occlusion_boxes

_CIFAR = ("cifar10", "cifar100")


class ClusterHead(BaseMethod):
    def __init__(self, cfg: omegaconf.DictConfig):
        """Cosine cluster head on a (frozen) threat-model backbone.

        Extra cfg settings:
            method_kwargs:
                threat_checkpoint (str): solo-learn or built-in checkpoint (``args.json`` beside it)
                    whose backbone weights are loaded; its architecture must match ``backbone``.
                num_clusters (int): K. Defaults to 10 x data.num_classes.
                temperature (float): softmax temperature of the cosine logits. Defaults to 0.1.
                freeze_backbone (bool): train only the head (and solo's online classifier). Defaults to True.
                occlusion_area (Sequence[float]): range of the occluded square's area, as a share of
                    the crop. Defaults to [0.02, 0.25].
                occlusion_p (float): probability that a crop is occluded. Defaults to 0.5.
                relabel (bool): an occluded view's label is its own nearest centroid, not its clean
                    image's cluster, so hiding a trigger may move a poison out of the poison cluster
                    (see solo_poisoncam/cluster/head.py). Defaults to True.
                kmeans_iters (int): Lloyd iterations. Defaults to 20.
                kmeans_backend (str): "auto", "torch" or "faiss". Defaults to "auto".
        """

        super().__init__(cfg)

        kw = cfg.method_kwargs
        self.num_clusters: int = int(kw.num_clusters)
        self.temperature: float = float(kw.temperature)
        self.freeze_backbone: bool = bool(kw.freeze_backbone)
        self.occlusion_area = (float(kw.occlusion_area[0]), float(kw.occlusion_area[1]))
        self.occlusion_p: float = float(kw.occlusion_p)
        self.relabel: bool = bool(kw.relabel)
        self.kmeans_iters: int = int(kw.kmeans_iters)
        self.kmeans_backend: str = str(kw.kmeans_backend)
        self.threat_checkpoint: str = str(kw.threat_checkpoint)

        load_threat_backbone(self.backbone, self.threat_checkpoint, cfg)
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)

        # placeholder weights: replaced by the k-means centroids at on_train_start (same shape, so
        # the optimizer built before that keeps pointing at the right tensor)
        self.head = CosineClusterHead(torch.randn(self.num_clusters, self.features_dim), self.temperature)
        self.register_buffer("centroids", torch.zeros(self.num_clusters, self.features_dim))
        self.register_buffer("pseudo_labels", torch.zeros(0, dtype=torch.long))
        self.register_buffer("clustered", torch.tensor(False))

    @staticmethod
    def add_and_assert_specific_cfg(cfg: omegaconf.DictConfig) -> omegaconf.DictConfig:
        """Adds method specific default values/checks for config.

        Args:
            cfg (omegaconf.DictConfig): DictConfig object.

        Returns:
            omegaconf.DictConfig: same as the argument, used to avoid errors.
        """

        cfg = super(ClusterHead, ClusterHead).add_and_assert_specific_cfg(cfg)

        threat = omegaconf_select(cfg, "method_kwargs.threat_checkpoint", None)
        check(threat is not None,
              "method=cluster_head needs method_kwargs.threat_checkpoint=<a solo-learn or built-in .ckpt with "
              "args.json beside it> (quote it on the command line: checkpoint names contain '=')")
        num_clusters = omegaconf_select(cfg, "method_kwargs.num_clusters", None)
        cfg.method_kwargs.num_clusters = 10 * int(cfg.data.num_classes) if num_clusters is None else num_clusters
        cfg.method_kwargs.temperature = omegaconf_select(cfg, "method_kwargs.temperature", 0.1)
        cfg.method_kwargs.freeze_backbone = omegaconf_select(cfg, "method_kwargs.freeze_backbone", True)
        cfg.method_kwargs.occlusion_area = omegaconf_select(cfg, "method_kwargs.occlusion_area", [0.02, 0.25])
        cfg.method_kwargs.occlusion_p = omegaconf_select(cfg, "method_kwargs.occlusion_p", 0.5)
        cfg.method_kwargs.relabel = omegaconf_select(cfg, "method_kwargs.relabel", True)
        cfg.method_kwargs.kmeans_iters = omegaconf_select(cfg, "method_kwargs.kmeans_iters", 20)
        cfg.method_kwargs.kmeans_backend = omegaconf_select(cfg, "method_kwargs.kmeans_backend", "auto")

        kw = cfg.method_kwargs
        check(int(kw.num_clusters) >= 1, f"method_kwargs.num_clusters must be >= 1, got {kw.num_clusters}")
        check(float(kw.temperature) > 0, f"method_kwargs.temperature must be positive, got {kw.temperature}")
        check(len(kw.occlusion_area) == 2 and 0 < kw.occlusion_area[0] <= kw.occlusion_area[1] <= 1,
              f"method_kwargs.occlusion_area must be [low, high] within (0, 1], got {list(kw.occlusion_area)}")
        check(0 <= float(kw.occlusion_p) <= 1, f"method_kwargs.occlusion_p must be in [0, 1], got {kw.occlusion_p}")
        check(int(kw.kmeans_iters) >= 1, f"method_kwargs.kmeans_iters must be >= 1, got {kw.kmeans_iters}")
        return cfg

    @property
    def learnable_params(self) -> List[Dict[str, Any]]:
        """Adds the cluster head's parameters; drops the backbone when it is frozen.

        Returns:
            List[dict]: list of learnable parameters.
        """

        params = super().learnable_params
        if self.freeze_backbone:
            params = [p for p in params if p["name"] != "backbone"]
        return params + [{"name": "cluster_head", "params": self.head.parameters()}]

    def train(self, mode: bool = True):
        """A frozen backbone stays in eval mode: its BatchNorm statistics are the threat model's."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, X: torch.Tensor) -> Dict[str, Any]:
        """Performs the forward pass of the backbone, the online classifier and the cluster head.

        Args:
            X (torch.Tensor): a batch of images in the tensor format.

        Returns:
            Dict[str, Any]: a dict containing the outputs of the parent (``feats``, ``logits``),
                ``z`` (L2-normalised features) and ``cluster_logits`` (B, K).
        """

        out = super().forward(X)
        out.update({"z": F.normalize(out["feats"], dim=-1), "cluster_logits": self.head(out["feats"])})
        return out

    def multicrop_forward(self, X: torch.Tensor) -> Dict[str, Any]:
        out = super().multicrop_forward(X)
        out.update({"z": F.normalize(out["feats"], dim=-1), "cluster_logits": self.head(out["feats"])})
        return out

    def occlude(self, X: torch.Tensor) -> torch.Tensor:
        """Hides a random square of each crop with probability ``occlusion_p``.

        Crops are normalised, so 0 is the data set's channel mean: the neutral fill of the detector.
        """

        b, _, h, w = X.shape
        boxes = random_occlusion_boxes(b, h, w, self.occlusion_area, self.occlusion_p)
        return X * box_masks(boxes.to(X.device), h, w).to(X.dtype)

    def cluster_labels(self, indexes: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return occluded_view_labels(feats, self.centroids, self.pseudo_labels[indexes], self.relabel)

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        """Training step for the cluster head (and solo's online classifier), on occluded crops.

        Args:
            batch (Sequence[Any]): a batch of data in the format of [img_indexes, [X], Y], where
                [X] is a list of size num_crops containing batches of images.
            batch_idx (int): index of the batch.

        Returns:
            torch.Tensor: total loss composed of the cluster-head loss and the classification loss.
        """

        indexes, X, targets = batch
        X = [X] if isinstance(X, torch.Tensor) else X
        out = super().training_step([indexes, [self.occlude(x) for x in X], targets], batch_idx)

        large = range(self.num_large_crops)
        cluster_loss = sum(
            cluster_head_loss_func(out["cluster_logits"][i], self.cluster_labels(indexes, out["feats"][i]))
            for i in large
        ) / self.num_large_crops

        self.log("train_cluster_loss", cluster_loss, on_epoch=True, sync_dist=True)

        return cluster_loss + out["loss"]

    def on_train_start(self):
        """Clusters the threat model's features of the whole training set (once; a resumed run keeps
        its centroids) and initialises the head from the centroids."""

        super().on_train_start()
        if bool(self.clustered):
            return
        feats = self.dataset_features(self.trainer.train_dataloader.dataset)
        runner = Runner(self.device, progress=False)
        result = None
        if runner.is_main:
            res = kmeans(feats.to(self.device), self.num_clusters, iters=self.kmeans_iters,
                         seed=int(omegaconf_select(self.cfg, "seed", 5)), backend=self.kmeans_backend)
            result = (res.centroids.cpu(), res.assignments.cpu())
        centroids, assignments = runner.broadcast_object(result)
        self.centroids.copy_(centroids.to(self.centroids))
        self.pseudo_labels = assignments.to(self.device)
        with torch.no_grad():
            self.head.weight.copy_(F.normalize(centroids, dim=1).to(self.head.weight))
        self.clustered.fill_(True)

    @torch.no_grad()
    def dataset_features(self, dataset) -> torch.Tensor:
        """(N, D) L2-normalised backbone features by dataset index: the mean over the large crops
        of one pass over the training set in index order (no shuffle, no dropped last batch),
        sharded over DDP ranks and gathered."""

        runner = Runner(self.device, progress=False)
        n = len(dataset)
        mine = runner.shard(n)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, mine.tolist()), batch_size=self.batch_size, shuffle=False,
            num_workers=int(omegaconf_select(self.cfg, "data.num_workers", 0)), drop_last=False)
        was_training = self.backbone.training
        self.backbone.eval()
        rows, seen = [], []
        for indexes, X, _ in loader:
            X = [X] if isinstance(X, torch.Tensor) else X
            f = torch.stack([F.normalize(self.backbone(x.to(self.device)).float(), dim=1)
                             for x in X[: self.num_large_crops]]).mean(0)
            rows.append(F.normalize(f, dim=1).cpu())
            seen.append(indexes)
        self.backbone.train(was_training)
        if seen and not torch.equal(torch.cat(seen), torch.as_tensor(mine)):
            raise PoisonCamError("the training set does not return its own index first; cluster_head needs "
                                 "solo-learn's dataset_with_index items (index, crops, target)")
        local = torch.cat(rows) if rows else torch.zeros(0, self.features_dim)
        return runner.gather(local, n)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Sizes the per-index pseudo-label buffer like the stored one before the state is loaded."""

        stored = checkpoint.get("state_dict", {}).get("pseudo_labels")
        if stored is not None:
            self.pseudo_labels = torch.zeros_like(stored, device=self.pseudo_labels.device)


def load_threat_backbone(backbone: torch.nn.Module, ckpt: str, cfg: omegaconf.DictConfig) -> None:
    """Loads the backbone weights of ``ckpt`` into solo's ``backbone``, refusing another architecture.

    Raises:
        PoisonCamError: no checkpoint / args.json, another backbone name or stem, or any missing,
            unexpected or differently shaped weight.
    """

    run = read_run_config(ckpt)
    name = (run.get("backbone") or {}).get("name")
    check(name == cfg.backbone.name,
          f"threat checkpoint '{ckpt}' holds a '{name}' backbone but this run builds '{cfg.backbone.name}'; "
          f"set backbone.name={name}")
    if str(name).startswith("resnet"):
        if run.get("backend") == "builtin":
            threat_cifar = bool((run["backbone"].get("kwargs") or {}).get("cifar_stem", False))
        else:
            threat_cifar = (run.get("data") or {}).get("dataset") in _CIFAR
        ours_cifar = cfg.data.dataset in _CIFAR
        check(threat_cifar == ours_cifar,
              f"threat checkpoint '{ckpt}' has the {'CIFAR' if threat_cifar else 'ImageNet'} ResNet stem but this "
              f"run builds the {'CIFAR' if ours_cifar else 'ImageNet'} one: solo-learn picks the stem by "
              f"data.dataset (CIFAR stem only for cifar10 / cifar100), here '{cfg.data.dataset}'")
    load_backbone_state(backbone, ckpt, name=cfg.backbone.name)


__all__ = ["ClusterHead", "load_threat_backbone"]
