"""Evaluation: detection / localisation / attack metrics, kNN and linear probes on frozen features."""

from solo_poisoncam.eval.knn import knn_accuracy, knn_predict
from solo_poisoncam.eval.linear import LinearProbe, label_budget_indexes, train_linear_probe
from solo_poisoncam.eval.metrics import (attack_metrics, auroc, average_precision, confusion_matrix,
                                         detection_metrics, localisation_metrics, precision_at_k)

__all__ = ["auroc", "average_precision", "precision_at_k", "detection_metrics", "localisation_metrics",
           "attack_metrics", "confusion_matrix", "knn_predict", "knn_accuracy", "LinearProbe",
           "label_budget_indexes", "train_linear_probe"]
