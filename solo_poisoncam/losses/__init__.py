"""Losses as pure functions, one per file (solo-learn's layout)."""

from solo_poisoncam.losses.byol import byol_loss_func
from solo_poisoncam.losses.cluster_head import cluster_head_loss_func
from solo_poisoncam.losses.simclr import simclr_loss_func
from solo_poisoncam.losses.simsiam import simsiam_loss_func

__all__ = ["byol_loss_func", "cluster_head_loss_func", "simclr_loss_func", "simsiam_loss_func"]
