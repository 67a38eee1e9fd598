"""Sinkhorn-Knopp with an equal partition (SwAV, Caron et al. 2020; seed 002, eq. 12-13).

Given scores S (B, K) between B samples and K prototypes, the soft assignment Q (B, K) maximises
<Q, S> + eps H(Q) subject to every prototype receiving B/K of the mass and every sample a mass of 1:
Q = diag(u) exp(S / eps) diag(v), with u, v found by alternately normalising rows and columns.
SwAV uses eps = 0.05 and 3 iterations; seed 002's appendix finds 3 iterations sufficient.
"""
from __future__ import annotations

import torch

EPSILON = 0.05
ITERATIONS = 3


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = EPSILON, iters: int = ITERATIONS) -> torch.Tensor:
    """(B, K) scores -> (B, K) assignment probabilities (rows sum to 1, columns to about B/K)."""
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must be a non-empty (B, K) matrix, got {tuple(scores.shape)}")
    if eps <= 0 or iters < 1:
        raise ValueError(f"need eps > 0 and at least one iteration, got eps {eps}, iters {iters}")
    s = scores.float() / eps
    q = torch.exp(s - s.max()).T  # (K, B); the shift cancels in the normalisations
    b, k = q.shape[1], q.shape[0]
    q /= q.sum()
    for _ in range(int(iters)):
        q /= q.sum(dim=1, keepdim=True)  # every prototype gets 1/K of the mass
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # every sample 1/B
        q /= b
    return (q * b).T
