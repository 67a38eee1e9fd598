"""Clustering stored features: spherical k-means, TEMI, the cluster bound (r_C, C_max, C*), and metrics.

``kmeans``/``temi`` work on arrays; ``labelings`` and ``bound`` add the workspace-level cache."""
from cedm.clusters.result import ClusterResult  # noqa: F401
