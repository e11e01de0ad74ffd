"""Clustering of SSL features: k-means (torch on any device, faiss when installed)."""

from solo_poisoncam.cluster.kmeans import ClusterResult, assign, kmeans

__all__ = ["ClusterResult", "assign", "kmeans"]
