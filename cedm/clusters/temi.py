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
from cedm.state import optimizer_from_tensors, optimizer_to_tensors, prefixed, unprefixed

# The official recipe (C-EDM table 8 and the TEMI repository's commands): 50 heads, 200 epochs, batch 512,
# AdamW lr 1e-4 per 256 images (linear scaling: 2e-4 at batch 512) after a 20-epoch linear warm-up, then
# constant (min_lr = lr); teacher EMA momentum constant 0.996 (max_momentum_teacher = 0.996); head
# in -> 512 -> 256 (nlayers 2) -> L2 -> weight-normalised last layer; raw backbone embeddings as inputs.
PAPER_HEADS, PAPER_EPOCHS = 50, 200
PAPER_SCHEDULE = {"heads": PAPER_HEADS, "epochs": PAPER_EPOCHS, "batch_size": 512, "teacher_momentum": 0.996,
                  "max_steps": 0}
# CPU default: the same recipe, epochs, batch and momentum, with fewer heads (each head costs the same; the
# heads train alike, coupled only by the shared batches and the ensemble weight, and the run keeps the
# lowest-loss one, which in the paper-schedule run on the demo also tended to use more clusters at larger C),
# and for large N at most CPU_MAX_STEPS optimiser steps (the epochs shrink, warm-up in proportion).
# 8 heads: the fewest whose expected r_C on the demo is within 0.02 of the paper's 50 heads at every C of
# 20..100 (2 heads fall 0.028 short at C = 80, 4 heads 0.023); about 11-12 CPU-minutes per C on the demo.
# bench/clustering.py --curve / --compare measure this (bench/README.md, "TEMI schedules on the demo").
CPU_MAX_STEPS = 2000
CPU_SCHEDULE = {"heads": 8, "epochs": PAPER_EPOCHS, "batch_size": 512, "teacher_momentum": 0.996,
                "max_steps": CPU_MAX_STEPS}
EXACT_KNN_LIMIT = 100_000  # above this, neighbours come from an approximate (IVF) faiss index
INPUTS = ("raw", "l2")


@dataclass
class TemiConfig:
    n_clusters: int
    heads: int = PAPER_HEADS
    epochs: int = PAPER_EPOCHS
    batch_size: int = 512
    lr: float = 1e-4                    # per 256 images: the optimiser uses lr * batch_size / 256
    warmup_epochs: int = 20             # linear warm-up of the learning rate from 0
    weight_decay: float = 1e-4
    gamma: float = 0.6                  # the paper's gamma (beta in the official code)
    knn: int = 50                       # m neighbours per image
    nlayers: int = 2                    # MLP layers before the bottleneck (official default 2)
    hidden_dim: int = 512
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.1
    teacher_momentum: float = 0.996     # constant, as the official recipe (max_momentum_teacher = 0.996)
    prior_momentum: float = 0.9         # EMA momentum of qhat_t(c)
    freeze_last_layer_epochs: int = 1
    inputs: str = "raw"                 # 'raw' backbone embeddings (official) or 'l2' (unit rows)
    max_steps: int = 0                  # cap on optimiser steps (fewer epochs for large N); 0 = no cap
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
    """H independent heads MLP(in -> hidden [-> hidden ...] -> bottleneck, GELU between) -> L2-normalise ->
    weight-normalised linear (bottleneck -> C, no bias), stored stacked so each layer is one batched matmul.

    ``nlayers`` linear layers before the bottleneck's normalisation (official default 2: in -> 512 -> 256;
    heads saved before the official recipe had 3). ``inputs``: 'raw' embeddings or 'l2' unit rows; the head
    applies it itself, so callers pass raw backbone features either way."""

    def __init__(self, heads: int, in_dim: int, n_clusters: int, hidden_dim: int = 512, bottleneck_dim: int = 256,
                 generator=None, nlayers: int = 2, inputs: str = "raw"):
        super().__init__()
        if nlayers < 1:
            raise CedmError(f"a TEMI head needs at least 1 layer, got {nlayers}")
        if inputs not in INPUTS:
            raise CedmError(f"TEMI inputs must be one of {', '.join(INPUTS)}, got {inputs!r}")
        self.config = {"heads": heads, "in_dim": in_dim, "n_clusters": n_clusters, "hidden_dim": hidden_dim,
                       "bottleneck_dim": bottleneck_dim, "nlayers": nlayers, "inputs": inputs}
        self.inputs = inputs

        def weight(i, o, std=0.02):  # truncated normal at +-2 std, as in DINO/TEMI heads
            w = torch.empty(heads, i, o)
            torch.nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std, generator=generator)
            return torch.nn.Parameter(w)

        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        self.nlayers = nlayers
        for k in range(nlayers):  # w1, b1, w2, b2, ...: the names heads saved before had (nlayers 3)
            setattr(self, f"w{k + 1}", weight(dims[k], dims[k + 1]))
            setattr(self, f"b{k + 1}", torch.nn.Parameter(torch.zeros(heads, 1, dims[k + 1])))
        # last layer: weight = g * v / ||v|| per output unit; g starts at 1 (and is trained: norm_last_layer off)
        self.v = torch.nn.Parameter(torch.randn(heads, bottleneck_dim, n_clusters, generator=generator)
                                    / math.sqrt(bottleneck_dim))
        self.g = torch.nn.Parameter(torch.ones(heads, 1, n_clusters))

    @property
    def heads(self) -> int:
        return self.w1.shape[0]

    def layers(self):
        return [(getattr(self, f"w{k + 1}"), getattr(self, f"b{k + 1}")) for k in range(self.nlayers)]

    def last_layer(self):
        return self.g * self.v / self.v.norm(dim=1, keepdim=True)

    def prepare(self, x):
        """The head's input transform applied to (B, D) backbone features."""
        return F.normalize(x, dim=-1) if self.inputs == "l2" else x

    def forward(self, x):
        """x: (B, D) prepared features shared by all heads -> logits (H, B, C)."""
        (w, b), *rest = self.layers()
        h = torch.matmul(x, w) + b   # (B, D) @ (H, D, hid) -> (H, B, hid)
        for w, b in rest:
            h = torch.baddbmm(b, F.gelu(h), w)
        h = F.normalize(h, dim=-1)
        return torch.bmm(h, self.last_layer())

    def select(self, index: int) -> "MultiHead":
        """A one-head copy holding head ``index``."""
        one = MultiHead(1, **{k: v for k, v in self.config.items() if k != "heads"})
        one.load_state_dict({k: t[index:index + 1].detach().clone() for k, t in self.state_dict().items()})
        return one

    def decay_parameters(self):
        return [w for w, _ in self.layers()] + [self.v]

    def no_decay_parameters(self):
        return [b for _, b in self.layers()] + [self.g]


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


def schedule_steps(n: int, batch_size: int, epochs: int, warmup_epochs: int,
                   max_steps: int = 0) -> tuple[int, int, int, int]:
    """(batch, steps per epoch, epochs, warm-up steps) for N images; ``max_steps`` caps the optimiser steps by
    running fewer epochs (at least 1; 0 = no cap), the warm-up shrinking in proportion."""
    batch = min(int(batch_size), n)
    steps_per_epoch = max(1, n // batch)  # drop the last incomplete batch, as the official loader does
    run_epochs = int(epochs)
    if max_steps and run_epochs * steps_per_epoch > max_steps:
        run_epochs = max(1, int(max_steps) // steps_per_epoch)
    warmup_steps = int(round(min(warmup_epochs, epochs) * run_epochs / epochs)) * steps_per_epoch
    return batch, steps_per_epoch, run_epochs, warmup_steps


def lr_at(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then constant (official: min_lr = lr)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * step / (warmup_steps - 1) if warmup_steps > 1 else base_lr
    return base_lr


# --- resuming -----------------------------------------------------------------------------------
CHECKPOINT_EVERY = 300.0  # seconds between training-state saves (at epoch ends; a cancel saves at once)


def _run_fingerprint(cfg: TemiConfig, x_np: np.ndarray, neighbors: np.ndarray) -> str:
    """What a saved training state must match to be resumed: the settings, the features and the neighbours."""
    import hashlib

    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for a in (x_np, np.ascontiguousarray(neighbors, dtype=np.int64)):
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save_state(path: Path, fingerprint: str, epoch: int, spent: dict, student, teacher, opt, prior,
                gen: torch.Generator) -> None:
    """Everything the loop needs to go on after ``epoch`` epochs, in one safetensors file written atomically."""
    from safetensors.torch import save_file

    from cedm import io

    tensors = {**prefixed("student", student.state_dict()), **prefixed("teacher", teacher.state_dict()),
               **optimizer_to_tensors(opt)[0], "prior": prior, "generator": gen.get_state()}
    meta = {"fingerprint": fingerprint, "epoch": str(epoch), **{k: repr(float(v)) for k, v in spent.items()}}
    with io.atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def _load_state(path: Path | None, fingerprint: str, student, teacher, opt, prior,
                gen: torch.Generator) -> tuple[int, dict]:
    """Restore a state saved by _save_state for this very run: (epochs done, {"seconds", "cpu_seconds"} spent
    so far); (0, zeros) when there is none, or it belongs to other settings or data (it is then ignored and
    later overwritten)."""
    none = (0, {"seconds": 0.0, "cpu_seconds": 0.0})
    if path is None or not Path(path).is_file():
        return none
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("fingerprint") != fingerprint:
                return none
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # a damaged file is no state: start afresh
        return none
    student.load_state_dict(unprefixed("student", tensors))
    teacher.load_state_dict(unprefixed("teacher", tensors))
    optimizer_from_tensors(opt, tensors, opt.state_dict()["param_groups"])  # the lr is set at every step
    prior.copy_(tensors["prior"])
    gen.set_state(tensors["generator"])
    return int(meta["epoch"]), {k: float(meta.get(k, 0.0)) for k in none[1]}


def temi(features, n_clusters: int, *, neighbors: np.ndarray | None = None, device=None, progress=None,
         checkpoint: str | Path | None = None, checkpoint_every: float = CHECKPOINT_EVERY,
         **settings) -> ClusterResult:
    """Train TEMI heads on (N, D) backbone features and return the best head's clustering.

    ``settings`` are TemiConfig fields (heads, epochs, gamma, ...); the schedule defaults to the paper's on
    a GPU and to CPU_SCHEDULE otherwise. ``neighbors`` (N, m) can be passed to reuse mined kNN (neighbours
    are always mined by cosine similarity). ``checkpoint``: a file for the training state, saved at epoch ends
    every ``checkpoint_every`` seconds and when ``progress`` raises (a cancel); a later call with the same
    settings, features and neighbours resumes from it and gives the same result as an uninterrupted run."""
    from cedm.device import resolve_device

    dev = resolve_device(device)
    settings = resolve_settings(dev, **settings)
    x_np = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x_np.ndim != 2 or len(x_np) == 0:
        raise CedmError(f"expected a (N, D) feature matrix, got shape {x_np.shape}")
    cfg = TemiConfig(n_clusters=check_n_clusters(n_clusters, len(x_np)), **settings)
    if cfg.heads < 1 or cfg.epochs < 1 or cfg.batch_size < 2 or cfg.warmup_epochs < 0:
        raise CedmError("TEMI needs heads >= 1, epochs >= 1, batch_size >= 2 and warmup_epochs >= 0")
    if cfg.max_steps < 0:
        raise CedmError(f"TEMI max_steps must be >= 0 (0 = no cap), got {cfg.max_steps}")
    n = len(x_np)
    t0, cpu0 = time.perf_counter(), time.process_time()
    if neighbors is None:
        neighbors = mine_neighbors(x_np, cfg.knn, seed=cfg.seed, device=dev)
    elif len(neighbors) != n:
        raise CedmError("neighbour table does not match the features")
    t_knn = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(cfg.seed)
    student = MultiHead(cfg.heads, x_np.shape[1], cfg.n_clusters, cfg.hidden_dim, cfg.bottleneck_dim,
                        generator=gen, nlayers=cfg.nlayers, inputs=cfg.inputs).to(dev)
    x = student.prepare(torch.from_numpy(x_np).to(dev))
    nbrs = torch.from_numpy(np.ascontiguousarray(neighbors)).to(dev)
    teacher = copy.deepcopy(student).requires_grad_(False)
    batch, steps_per_epoch, epochs, warmup_steps = schedule_steps(n, cfg.batch_size, cfg.epochs,
                                                                  cfg.warmup_epochs, cfg.max_steps)
    base_lr = cfg.lr * batch / 256  # linear scaling rule of the official code
    opt = torch.optim.AdamW([{"params": student.decay_parameters(), "weight_decay": cfg.weight_decay},
                             {"params": student.no_decay_parameters(), "weight_decay": 0.0}], lr=base_lr)
    prior = torch.full((cfg.heads, cfg.n_clusters), 1.0 / cfg.n_clusters, device=dev)

    total_steps = epochs * steps_per_epoch
    m = cfg.teacher_momentum
    epoch_losses = torch.zeros(cfg.heads, device=dev)
    fingerprint = _run_fingerprint(cfg, x_np, neighbors) if checkpoint is not None else ""
    start, spent = _load_state(checkpoint, fingerprint, student, teacher, opt, prior, gen)  # never past the end
    if start and progress:
        progress(start, epochs, "TEMI epochs (resumed)")
    last_save = time.perf_counter()

    def so_far() -> dict:  # wall and CPU seconds of the whole run, over every call that worked on it
        return {"seconds": spent["seconds"] + time.perf_counter() - t0,
                "cpu_seconds": spent["cpu_seconds"] + time.process_time() - cpu0}

    def save(done: int) -> None:
        _save_state(Path(checkpoint), fingerprint, done, so_far(), student, teacher, opt, prior, gen)

    for epoch in range(start, epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        pick = torch.randint(nbrs.shape[1], (n,), generator=gen).to(dev)  # fresh neighbour per image
        partner = nbrs[torch.arange(n, device=dev), pick]
        epoch_losses.zero_()
        for step in range(steps_per_epoch):
            it = epoch * steps_per_epoch + step
            for group in opt.param_groups:
                group["lr"] = lr_at(it, base_lr, warmup_steps)
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
            with torch.no_grad():
                t_params = list(teacher.parameters())
                torch._foreach_mul_(t_params, m)
                torch._foreach_add_(t_params, [p.detach() for p in student.parameters()], alpha=1 - m)
            epoch_losses += head_losses.detach()
        if not torch.isfinite(epoch_losses).all():
            raise CedmError("TEMI training diverged (non-finite loss); try a lower learning rate")
        last = epoch + 1 == epochs
        if checkpoint is not None and not last and time.perf_counter() - last_save >= checkpoint_every:
            save(epoch + 1)
            last_save = time.perf_counter()
        if progress:
            try:
                progress(epoch + 1, epochs, "TEMI epochs")
            except BaseException:  # cancelled: keep this epoch's state so the next call goes on from here
                if checkpoint is not None and not last:
                    save(epoch + 1)
                raise
    head_losses = (epoch_losses / steps_per_epoch).cpu().numpy()
    best = int(np.argmin(head_losses))
    head_used = heads_n_used(teacher, x)
    head = teacher.select(best).cpu()
    probs = predict_proba(head, x_np, cfg.teacher_temp)
    assignments = probs.argmax(1).astype(np.int64)
    return ClusterResult(method="temi", n_clusters=cfg.n_clusters, assignments=assignments,
                         confidence=probs.max(1).astype(np.float32), probs=probs, head=head,
                         params=asdict(cfg),
                         info={**so_far(), "knn_seconds": t_knn,
                               "resumed_at_epoch": start,
                               "best_head": best, "head_losses": head_losses.tolist(),
                               "head_n_used": head_used,
                               "steps": total_steps, "epochs_run": epochs, "lr": base_lr,
                               "device": str(dev)})


def heads_n_used(heads: MultiHead, x: torch.Tensor, batch: int = 8192) -> list[int]:
    """C_u of every head (clusters that get at least one of the prepared rows ``x``): what each head alone would
    give as r_C, so one many-head run also shows how much choosing among fewer heads moves the bound."""
    used = torch.zeros(heads.heads, heads.config["n_clusters"], dtype=torch.bool, device=x.device)
    with torch.no_grad():
        for s in range(0, len(x), batch):
            ids = heads(x[s:s + batch]).argmax(-1)  # (H, b)
            used.scatter_(1, ids, True)
    return used.sum(1).tolist()


# --- using a trained head ------------------------------------------------------------------------
def predict_proba(head: MultiHead, features, temperature: float = 0.1, batch: int = 8192) -> np.ndarray:
    """(N, C) float32 cluster probabilities of the first head for new images' backbone features (raw; the head
    applies its own input transform)."""
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    dev = head.w1.device
    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            logits = head(head.prepare(torch.from_numpy(x[s:s + batch]).to(dev)))[0]
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
        # heads saved before the official recipe: 3 layers on L2-normalised inputs
        head = MultiHead(**arch, nlayers=int(cfg.get("nlayers", 3)), inputs=str(cfg.get("inputs", "l2")))
        head.load_state_dict(load_file(str(path.with_suffix(".safetensors"))))
    except (OSError, KeyError, ValueError, RuntimeError, CedmError) as e:
        raise CedmError(f"cannot load TEMI head from {path}: {e}") from e
    return head.eval(), cfg
