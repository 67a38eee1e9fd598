"""TEMI: Teacher Ensemble-weighted pointwise Mutual Information clustering (Adaloglou et al.; C-EDM sec. 3.1).

For each image x, a neighbour x' is drawn (fresh every epoch) from its m nearest neighbours in feature space.
H student heads and their EMA teachers map features to C cluster probabilities. Per head::

    L(x, x') = - w(x, x') log sum_c (q_s(c|x) q_t(c|x'))^gamma / qhat_t(c)

symmetrised over (x, x'), where qhat_t is an EMA of the teacher's batch-mean probabilities and
w(x, x') = mean over heads of sum_c q_t(c|x) q_t(c|x') (the teacher ensemble's agreement, no gradient).
gamma < 1 keeps clusters in use (0.6 gives close to uniform use; 1 lets clusters collapse, appendix C.2).
After training, the head with the lowest average loss in the last epoch is kept.

All H heads run as one batched computation: the weights are stacked as (H, in, out) and every layer is a
single batched matmul, so 50 heads cost about what one wide layer costs.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cedm.clusters.result import ClusterResult, check_n_clusters, l2_normalize
from cedm.errors import CedmError

# Paper (C-EDM table 8) settings; epochs/heads are the expensive part.
PAPER_HEADS, PAPER_EPOCHS = 50, 200
# CPU defaults: ~3.4k images x 1280-d must finish in under a minute on 2 cores, which buys a few hundred
# optimiser steps instead of the paper's ~20k. Fewer heads/epochs pay for it; a smaller batch (more steps per
# epoch) and a faster teacher EMA (0.99) let those few steps converge. See docs / README for the cost.
PAPER_SCHEDULE = {"heads": PAPER_HEADS, "epochs": PAPER_EPOCHS, "batch_size": 512, "teacher_momentum": 0.996}
CPU_SCHEDULE = {"heads": 2, "epochs": 10, "batch_size": 64, "teacher_momentum": 0.99}
EXACT_KNN_LIMIT = 100_000  # above this, neighbours come from an approximate (IVF) faiss index


@dataclass
class TemiConfig:
    n_clusters: int
    heads: int = PAPER_HEADS
    epochs: int = PAPER_EPOCHS
    batch_size: int = 512
    lr: float = 1e-4
    weight_decay: float = 1e-4
    gamma: float = 0.6                  # the paper's gamma (beta in the official code)
    knn: int = 50                       # m neighbours per image
    hidden_dim: int = 512
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.1
    teacher_momentum: float = 0.996     # raised to 1 with a cosine schedule, as in the official code
    prior_momentum: float = 0.9         # EMA momentum of qhat_t(c)
    freeze_last_layer_epochs: int = 1
    seed: int = 0

    def settings(self) -> dict:
        """Everything but the number of clusters (used as part of cache keys)."""
        d = asdict(self)
        d.pop("n_clusters")
        return d


def default_schedule(device=None) -> dict:
    """Heads, epochs, batch and teacher momentum: the paper's on a GPU, the CPU schedule elsewhere."""
    on_gpu = device is not None and str(device).startswith("cuda")
    return dict(PAPER_SCHEDULE if on_gpu else CPU_SCHEDULE)


def resolve_settings(device=None, **settings) -> dict:
    """Complete TEMI settings (all TemiConfig fields but n_clusters), defaults filled in for ``device``."""
    unknown = set(settings) - {f.name for f in fields(TemiConfig)} - {"n_clusters"}
    if unknown:
        raise CedmError(f"unknown TEMI setting(s): {', '.join(sorted(unknown))}")
    given = {k: v for k, v in settings.items() if v is not None and k != "n_clusters"}
    return TemiConfig(n_clusters=2, **{**default_schedule(device), **given}).settings()


# --- neighbours ----------------------------------------------------------------------------------
def mine_neighbors(features, m: int = 50, exact_limit: int = EXACT_KNN_LIMIT, seed: int = 0,
                   device=None) -> np.ndarray:
    """(N, m) int64 indices of each row's m most cosine-similar other rows (never itself).

    Exact up to ``exact_limit`` rows, an approximate faiss IVF index above. On a CUDA ``device`` the exact
    search runs as chunked matmuls in torch (faiss from PyPI is CPU-only; 50k x 768 takes well under a second)."""
    x = l2_normalize(features)
    n, d = x.shape
    if n < 2:
        raise CedmError("TEMI needs at least 2 images")
    m = int(min(m, n - 1))
    if device is not None and torch.device(device).type == "cuda" and n <= exact_limit:
        return exact_neighbors_torch(x, m, torch.device(device))
    import faiss

    if n <= exact_limit:
        index = faiss.IndexFlatIP(d)
    else:  # approximate: inverted lists over a coarse k-means, several probed per query
        nlist = int(4 * math.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(x[np.random.default_rng(seed).permutation(n)[:min(n, 64 * nlist)]])
        index.nprobe = 16
    if faiss.get_num_gpus():
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    out = np.empty((n, m), dtype=np.int64)
    for s in range(0, n, 16384):
        _, idx = index.search(x[s:s + 16384], m + 1)
        rows = np.arange(s, s + len(idx))[:, None]
        keep = idx != rows
        keep[keep.all(axis=1), -1] = False  # self not returned (duplicates): drop the farthest instead
        idx = idx[keep].reshape(len(idx), m)
        # an approximate index may return -1 for missing neighbours: fall back to the nearest one found
        bad = idx < 0
        if bad.any():
            idx = np.where(bad, idx[:, :1], idx)
        out[s:s + len(idx)] = idx
    return out


def exact_neighbors_torch(x: np.ndarray, m: int, device, chunk: int = 4096) -> np.ndarray:
    """Exact cosine kNN of unit rows by chunked matmul + top-k on ``device``, self excluded."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    out = np.empty((len(x), m), dtype=np.int64)
    for s in range(0, len(x), chunk):
        sims = xt[s:s + chunk] @ xt.T  # float32 (TF32 if the process turned it on: near-ties may swap)
        rows = torch.arange(s, s + len(sims), device=device)
        sims[torch.arange(len(sims), device=device), rows] = -float("inf")
        out[s:s + len(sims)] = sims.topk(m, dim=1).indices.cpu().numpy()
    return out


# --- the heads -----------------------------------------------------------------------------------
class MultiHead(torch.nn.Module):
    """H independent heads MLP(in -> hidden -> hidden -> bottleneck, GELU) -> L2-normalise ->
    weight-normalised linear (bottleneck -> C, no bias), stored stacked so each layer is one batched matmul."""

    def __init__(self, heads: int, in_dim: int, n_clusters: int, hidden_dim: int = 512, bottleneck_dim: int = 256,
                 generator=None):
        super().__init__()
        self.config = {"heads": heads, "in_dim": in_dim, "n_clusters": n_clusters,
                       "hidden_dim": hidden_dim, "bottleneck_dim": bottleneck_dim}

        def weight(i, o, std=0.02):  # truncated normal at +-2 std, as in DINO/TEMI heads
            w = torch.empty(heads, i, o)
            torch.nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=generator)
            return torch.nn.Parameter(w)

        P = torch.nn.Parameter
        self.w1, self.b1 = weight(in_dim, hidden_dim), P(torch.zeros(heads, 1, hidden_dim))
        self.w2, self.b2 = weight(hidden_dim, hidden_dim), P(torch.zeros(heads, 1, hidden_dim))
        self.w3, self.b3 = weight(hidden_dim, bottleneck_dim), P(torch.zeros(heads, 1, bottleneck_dim))
        # last layer: weight = g * v / ||v|| per output unit; g starts at 1
        self.v = P(torch.randn(heads, bottleneck_dim, n_clusters, generator=generator) / math.sqrt(bottleneck_dim))
        self.g = P(torch.ones(heads, 1, n_clusters))

    @property
    def heads(self) -> int:
        return self.w1.shape[0]

    def last_layer(self):
        return self.g * self.v / self.v.norm(dim=1, keepdim=True)

    def forward(self, x):
        """x: (B, D) shared by all heads -> logits (H, B, C)."""
        gelu = F.gelu
        h = gelu(torch.matmul(x, self.w1) + self.b1)   # (B, D) @ (H, D, hid) -> (H, B, hid)
        h = gelu(torch.baddbmm(self.b2, h, self.w2))
        h = torch.baddbmm(self.b3, h, self.w3)
        h = F.normalize(h, dim=-1)
        return torch.bmm(h, self.last_layer())

    def select(self, index: int) -> "MultiHead":
        """A one-head copy holding head ``index``."""
        one = MultiHead(1, **{k: v for k, v in self.config.items() if k != "heads"})
        one.load_state_dict({k: t[index:index + 1].detach().clone() for k, t in self.state_dict().items()})
        return one

    def decay_parameters(self):
        return [self.w1, self.w2, self.w3, self.v]

    def no_decay_parameters(self):
        return [self.b1, self.b2, self.b3, self.g]


def temi_loss(student_logits, teacher_logits, prior, gamma: float, student_temp: float, teacher_temp: float):
    """Per-head symmetrised, ensemble-weighted TEMI loss.

    student_logits, teacher_logits: (H, 2B, C) for the stacked batch [x; x']; prior: (H, C) = qhat_t.
    Returns (H,) losses. Computed in log space: log sum_c exp(gamma (log q_s + log q_t) - log qhat)."""
    b = student_logits.shape[1] // 2
    log_ps = F.log_softmax(student_logits / student_temp, dim=-1)
    with torch.no_grad():
        log_pt = F.log_softmax(teacher_logits / teacher_temp, dim=-1)
        pt = log_pt.exp()
        weight = (pt[:, :b] * pt[:, b:]).sum(-1).mean(0)          # (B,), same for every head
        log_prior = prior.log().unsqueeze(1)                       # (H, 1, C)

    def pmi(log_s, log_t):  # (H, B, C) each -> (H,)
        return -(weight * torch.logsumexp(gamma * (log_s + log_t) - log_prior, dim=-1)).mean(-1)

    return 0.5 * (pmi(log_ps[:, :b], log_pt[:, b:]) + pmi(log_ps[:, b:], log_pt[:, :b]))


def temi(features, n_clusters: int, *, neighbors: np.ndarray | None = None, device=None, progress=None,
         **settings) -> ClusterResult:
    """Train TEMI heads on (N, D) features and return the best head's clustering.

    ``settings`` are TemiConfig fields (heads, epochs, gamma, ...); heads/epochs default to the paper's on a
    GPU and to the CPU defaults otherwise. ``neighbors`` (N, m) can be passed to reuse mined kNN."""
    from cedm.device import resolve_device

    dev = resolve_device(device)
    settings = resolve_settings(dev, **settings)
    x_np = l2_normalize(features)
    cfg = TemiConfig(n_clusters=check_n_clusters(n_clusters, len(x_np)), **settings)
    if cfg.heads < 1 or cfg.epochs < 1 or cfg.batch_size < 2:
        raise CedmError("TEMI needs heads >= 1, epochs >= 1 and batch_size >= 2")
    n = len(x_np)
    t0 = time.perf_counter()
    if neighbors is None:
        neighbors = mine_neighbors(x_np, cfg.knn, seed=cfg.seed, device=dev)
    elif len(neighbors) != n:
        raise CedmError("neighbour table does not match the features")
    t_knn = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(cfg.seed)
    x = torch.from_numpy(x_np).to(dev)
    nbrs = torch.from_numpy(np.ascontiguousarray(neighbors)).to(dev)
    student = MultiHead(cfg.heads, x.shape[1], cfg.n_clusters, cfg.hidden_dim, cfg.bottleneck_dim,
                        generator=gen).to(dev)
    teacher = copy.deepcopy(student).requires_grad_(False)
    opt = torch.optim.AdamW([{"params": student.decay_parameters(), "weight_decay": cfg.weight_decay},
                             {"params": student.no_decay_parameters(), "weight_decay": 0.0}], lr=cfg.lr)
    prior = torch.full((cfg.heads, cfg.n_clusters), 1.0 / cfg.n_clusters, device=dev)

    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)  # drop the last incomplete batch, as the official loader does
    total_steps = cfg.epochs * steps_per_epoch
    epoch_losses = torch.zeros(cfg.heads, device=dev)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        pick = torch.randint(nbrs.shape[1], (n,), generator=gen).to(dev)  # fresh neighbour per image
        partner = nbrs[torch.arange(n, device=dev), pick]
        epoch_losses.zero_()
        for step in range(steps_per_epoch):
            idx = perm[step * batch:(step + 1) * batch]
            pair = torch.cat([x[idx], x[partner[idx]]])           # [x; x']
            with torch.no_grad():
                t_logits = teacher(pair)
                pt = torch.softmax(t_logits / cfg.teacher_temp, dim=-1)
                prior.mul_(cfg.prior_momentum).add_((1 - cfg.prior_momentum) * pt.mean(1))
            head_losses = temi_loss(student(pair), t_logits, prior, cfg.gamma, cfg.student_temp, cfg.teacher_temp)
            opt.zero_grad(set_to_none=True)
            head_losses.mean().backward()
            if epoch < cfg.freeze_last_layer_epochs:  # last layer frozen at first: helps training start
                student.v.grad = student.g.grad = None
            opt.step()
            it = epoch * steps_per_epoch + step
            m = 1 - (1 - cfg.teacher_momentum) * (math.cos(math.pi * it / total_steps) + 1) / 2
            with torch.no_grad():
                t_params = list(teacher.parameters())
                torch._foreach_mul_(t_params, m)
                torch._foreach_add_(t_params, [p.detach() for p in student.parameters()], alpha=1 - m)
            epoch_losses += head_losses.detach()
        if not torch.isfinite(epoch_losses).all():
            raise CedmError("TEMI training diverged (non-finite loss); try a lower learning rate")
        if progress:
            progress(epoch + 1, cfg.epochs, "TEMI epochs")
    head_losses = (epoch_losses / steps_per_epoch).cpu().numpy()
    best = int(np.argmin(head_losses))
    head = teacher.select(best).cpu()
    probs = predict_proba(head, x_np, cfg.teacher_temp)
    assignments = probs.argmax(1).astype(np.int64)
    return ClusterResult(method="temi", n_clusters=cfg.n_clusters, assignments=assignments,
                         confidence=probs.max(1).astype(np.float32), probs=probs, head=head,
                         params=asdict(cfg),
                         info={"seconds": time.perf_counter() - t0, "knn_seconds": t_knn,
                               "best_head": best, "head_losses": head_losses.tolist(),
                               "steps": total_steps, "device": str(dev)})


# --- using a trained head ------------------------------------------------------------------------
def predict_proba(head: MultiHead, features, temperature: float = 0.1, batch: int = 8192) -> np.ndarray:
    """(N, C) float32 cluster probabilities of the first head for new (normalised) features."""
    x = l2_normalize(features)
    dev = head.w1.device
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            logits = head(torch.from_numpy(x[s:s + batch]).to(dev))[0]
            out.append(torch.softmax(logits / temperature, dim=-1).float().cpu().numpy())
    return np.concatenate(out)


def assign(head: MultiHead, features, temperature: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(cluster id, confidence = max probability) for new images' features."""
    p = predict_proba(head, features, temperature)
    return p.argmax(1).astype(np.int64), p.max(1).astype(np.float32)


def save_head(head: MultiHead, path, temperature: float = 0.1, extra: dict | None = None) -> None:
    """Weights as ``<path>.safetensors``, architecture as ``<path>.json`` (both written atomically)."""
    from safetensors.torch import save_file
    from cedm import io

    path = Path(path)
    with io.atomic_file(path.with_suffix(".safetensors")) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(tmp))
    io.write_json(path.with_suffix(".json"), {**head.config, "temperature": temperature, **(extra or {})})


def load_head(path) -> tuple[MultiHead, dict]:
    """Head and its config saved by save_head (safetensors: no code is unpickled)."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        cfg = json.loads(path.with_suffix(".json").read_text())
        arch = {k: int(cfg[k]) for k in ("heads", "in_dim", "n_clusters", "hidden_dim", "bottleneck_dim")}
        head = MultiHead(**arch)
        head.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise CedmError(f"cannot load TEMI head from {path}: {e}") from e
    return head.eval(), cfg
