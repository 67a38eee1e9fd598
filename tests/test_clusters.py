"""Clustering, TEMI, the cluster bound, metrics and workspace labelings on synthetic data with known structure."""
import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from cedm.clusters import bound, metrics
from cedm.clusters.kmeans import assign_to_centroids, kmeans
from cedm.clusters.temi import (MultiHead, assign, exact_neighbors_torch, load_head, mine_neighbors, predict_proba,
                               save_head, temi, temi_loss)
from cedm.errors import CedmError

# Small heads and a short, many-step schedule: converges on the toy data in a few seconds.
FAST = dict(heads=2, epochs=60, batch_size=32, hidden_dim=64, bottleneck_dim=32, teacher_momentum=0.99)


def blobs(noise, k=10, per=60, d=64, seed=0):
    """k well-separated clusters on the unit sphere in d dimensions (noise 0: exact duplicates)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    y = np.repeat(np.arange(k), per)
    x = centers[y] + noise * rng.normal(size=(k * per, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


pytestmark = pytest.mark.usefixtures("one_thread")


# --- metrics -------------------------------------------------------------------------------------
def test_metrics_hand_computed():
    a = np.array([0, 0, 1, 1])
    b = np.array([0, 0, 0, 1])
    # contingency [[2,0],[1,1]]: sum C(n_ij,2) = 1; rows: 1+1 = 2; cols: 3+0 = 3; C(4,2) = 6
    # ARI = (1 - 2*3/6) / (0.5*(2+3) - 2*3/6) = 0 / 1.5 = 0
    assert metrics.ari(a, b) == pytest.approx(0.0, abs=1e-12)
    # NMI: H(a) = ln 2, H(b) = -(3/4 ln 3/4 + 1/4 ln 1/4), I = sum p_ij ln(p_ij / p_i p_j)
    ha = math.log(2)
    hb = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    i = 0.5 * math.log(0.5 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.75)) + 0.25 * math.log(0.25 / (0.5 * 0.25))
    assert metrics.nmi(a, b) == pytest.approx(i / ((ha + hb) / 2), rel=1e-9)
    assert metrics.hungarian_accuracy(a, b) == pytest.approx(0.75)
    table, ids_a, ids_b = metrics.contingency(a, b)
    assert table.tolist() == [[2, 0], [1, 1]] and ids_a.tolist() == [0, 1] and ids_b.tolist() == [0, 1]


def test_accuracy_both_ways_with_surplus_clusters():
    # 2 classes, 4 clusters: clusters 0, 1 are class 0; 2, 3 are class 1 (pure clusters, over-clustered)
    y = np.array([0] * 4 + [0] * 2 + [1] * 3 + [1] * 1)
    c = np.array([0] * 4 + [1] * 2 + [2] * 3 + [3] * 1)
    # one-to-one: only two clusters can be matched (0 -> 0, 2 -> 1): 7 of 10
    assert metrics.hungarian_accuracy(c, y) == pytest.approx(0.7)
    # official: surplus clusters 1 and 3 go to their majority class: all 10 right
    assert metrics.majority_accuracy(c, y) == pytest.approx(1.0)
    m = metrics.compare(c, y)
    assert m["accuracy"] == m["accuracy_hungarian"] == pytest.approx(0.7) and m["accuracy_majority"] == 1.0
    assert "0.700 one-to-one" in metrics.accuracy_text(m) and "1.000 majority" in metrics.accuracy_text(m)
    # no surplus (C <= classes): both are the Hungarian accuracy
    a, b = np.array([0, 0, 1, 1, 2, 2]), np.array([1, 1, 0, 2, 2, 2])
    assert metrics.majority_accuracy(a, b) == metrics.hungarian_accuracy(a, b) == pytest.approx(5 / 6)
    # a surplus cluster is mapped to its majority class, not to the class it would tie a matched cluster with
    c2, y2 = np.array([0, 0, 0, 1, 1, 2, 2, 2]), np.array([0, 0, 1, 1, 1, 0, 0, 0])
    assert metrics.majority_accuracy(c2, y2) == pytest.approx(7 / 8)


def test_metrics_permutation_unequal_and_unlabelled():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    perm = rng.permutation(7) + 3  # different ids, same partition
    m = metrics.compare(perm[y], y)
    assert m["accuracy"] == 1.0 and m["nmi"] == pytest.approx(1.0) and m["ami"] == pytest.approx(1.0)
    assert m["ari"] == pytest.approx(1.0)
    # 2 clusters vs 4 classes: best one-to-one matching covers two classes only
    a, b = np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert metrics.hungarian_accuracy(a, b) == pytest.approx(0.5)
    assert metrics.hungarian_accuracy(b, a) == pytest.approx(0.5)
    # rows labelled -1 are ignored
    a2, b2 = np.array([0, 0, 1, 1, -1, 1]), np.array([5, 5, 6, 6, 6, -1])
    assert metrics.compare(a2, b2)["n_compared"] == 4 and metrics.hungarian_accuracy(a2, b2) == 1.0
    with pytest.raises(CedmError):
        metrics.nmi([0, 1], [0, 1, 2])
    s = metrics.size_stats([0, 0, 2, 2, 2, -1], n_clusters=4)
    assert (s["n_used"], s["min"], s["max"], s["sizes"]) == (2, 2, 3, [2, 0, 3, 0])
    assert s["utilization"] == 0.5


# --- k-means and TEMI ----------------------------------------------------------------------------
def test_kmeans_metrics_differ_where_norms_matter():
    # two directions 10 degrees apart, each at radii 1 and 10: Euclidean k-means (the paper's) splits by radius,
    # spherical k-means by direction
    rng = np.random.default_rng(0)
    dirs = np.zeros((2, 8), np.float32)
    dirs[0, 0], dirs[1, :2] = 1.0, (np.cos(np.pi / 18), np.sin(np.pi / 18))
    direction = np.repeat([0, 1, 0, 1], 50)
    radius = np.repeat([1.0, 1.0, 10.0, 10.0], 50).astype(np.float32)
    x = dirs[direction] * radius[:, None] + 0.001 * rng.normal(size=(200, 8)).astype(np.float32)
    sph = kmeans(x, 2, metric="spherical")
    euc = kmeans(x, 2)  # default: euclidean
    assert sph.method == "skmeans" and euc.method == "kmeans" and euc.params["metric"] == "euclidean"
    assert metrics.ami(sph.assignments, direction) > 0.99
    assert metrics.ami(euc.assignments, radius > 5) > 0.99 and metrics.ami(euc.assignments, direction) < 0.1
    assert np.allclose(np.linalg.norm(sph.centroids, axis=1), 1, atol=1e-5)
    assert np.linalg.norm(euc.centroids, axis=1).max() > 5  # raw-space means
    for res, metric in ((sph, "spherical"), (euc, "euclidean")):
        idx, sims = assign_to_centroids(x, res.centroids, metric)
        assert (idx == res.assignments).all() and np.allclose(sims, res.confidence, atol=1e-5)
    with pytest.raises(CedmError, match="unknown k-means metric"):
        kmeans(x, 2, metric="manhattan")


def test_kmeans_recovers_clusters():
    x, y = blobs(0.1)
    res = kmeans(x, 10, seed=0, metric="spherical")
    assert metrics.nmi(res.assignments, y) >= 0.9
    assert res.assignments.dtype == np.int64 and res.q.sum() == pytest.approx(1.0)
    cos = (x * res.centroids[res.assignments]).sum(1)
    assert np.allclose(res.confidence, cos, atol=1e-5)
    idx, sims = assign_to_centroids(x[:5], res.centroids)
    assert (idx == res.assignments[:5]).all()
    assert (kmeans(x, 10, seed=0, metric="spherical").assignments == res.assignments).all()  # seeded
    assert metrics.nmi(kmeans(x, 10, seed=0).assignments, y) >= 0.9  # Euclidean on unit rows: as good


def test_neighbors_exclude_self_and_follow_structure():
    x, y = blobs(0.1)
    nb = mine_neighbors(x, 50)
    assert nb.shape == (600, 50) and not (nb == np.arange(600)[:, None]).any()
    assert (y[nb] == y[:, None]).mean() > 0.99
    assert mine_neighbors(x[:20], 50).shape == (20, 19)  # capped below N
    approx = mine_neighbors(x, 20, exact_limit=100)  # the approximate (IVF) index used for large N
    assert approx.shape == (600, 20) and (y[approx] == y[:, None]).mean() > 0.95
    assert not (approx == np.arange(600)[:, None]).any()
    # the torch search (what CUDA devices use) finds the same neighbours as faiss, in chunks
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    fast = exact_neighbors_torch(xn, 50, torch.device("cpu"), chunk=128)
    assert fast.shape == nb.shape and not (fast == np.arange(600)[:, None]).any()
    assert np.mean([len(set(a) & set(b)) / 50 for a, b in zip(fast, nb)]) > 0.999


def test_temi_recovers_clusters_and_utilization_drops_far_above():
    x, y = blobs(0.1)
    res = temi(x, 10, **FAST)
    assert metrics.nmi(res.assignments, y) >= 0.9
    assert res.utilization >= 0.96
    assert res.probs.shape == (600, 10) and res.probs.dtype == np.float32
    assert np.allclose(res.probs.sum(1), 1, atol=1e-5)
    assert np.allclose(res.confidence, res.probs.max(1)) and (res.assignments == res.probs.argmax(1)).all()
    far = temi(x, 300, **FAST)  # 30x the true count: many clusters stay empty
    assert far.utilization < 0.85
    # every head's own C_u is reported; the chosen head's is the result's
    used = far.info["head_n_used"]
    assert len(used) == FAST.get("heads", 2) and used[far.info["best_head"]] == far.n_used
    assert all(1 <= u <= 300 for u in used)


def test_temi_is_deterministic_and_head_round_trips(tmp_path):
    x, _ = blobs(0.1, per=20)
    kw = dict(FAST, epochs=3)
    a, b = temi(x, 10, **kw), temi(x, 10, **kw)
    assert (a.assignments == b.assignments).all() and np.array_equal(a.probs, b.probs)
    save_head(a.head, tmp_path / "head")
    head, cfg = load_head(tmp_path / "head")
    ids, conf = assign(head, x, cfg["temperature"])
    assert (ids == a.assignments).all() and np.allclose(conf, a.confidence, atol=1e-6)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CedmError):
        load_head(tmp_path / "bad")


class Stop(Exception):
    pass


def stop_after(epochs):
    """A progress callback that cancels the run after ``epochs`` epochs (as the app's Cancel does)."""
    def progress(done, total, desc):
        if done >= epochs and "resumed" not in desc:
            raise Stop
    return progress


def test_temi_resumes_bit_exact_after_a_cancel(tmp_path):
    x, _ = blobs(0.1, per=20)
    kw = dict(FAST, epochs=6)
    full = temi(x, 10, **kw)
    state = tmp_path / "state.safetensors"
    with pytest.raises(Stop):  # cancelled after 2 of 6 epochs: the state at that epoch end is kept
        temi(x, 10, checkpoint=state, checkpoint_every=1e9, progress=stop_after(2), **kw)
    assert state.is_file()
    seen = []
    res = temi(x, 10, checkpoint=state, progress=lambda d, t, desc: seen.append(d), **kw)
    assert res.info["resumed_at_epoch"] == 2 and seen[0] == 2 and seen[-1] == 6
    assert np.array_equal(res.probs, full.probs) and (res.assignments == full.assignments).all()
    assert res.info["head_losses"] == full.info["head_losses"]
    assert res.info["cpu_seconds"] > 0 and res.info["seconds"] >= res.info["cpu_seconds"] * 0.5  # both calls' time
    # periodic saves (every epoch end here) resume the same way
    with pytest.raises(Stop):
        temi(x, 10, checkpoint=state, checkpoint_every=0, progress=stop_after(4), **kw)
    assert np.array_equal(temi(x, 10, checkpoint=state, **kw).probs, full.probs)
    # a state of other settings or other features is ignored (a fresh start), never mixed in
    other = temi(x, 10, checkpoint=state, **dict(kw, seed=1))
    assert other.info["resumed_at_epoch"] == 0
    fresh = temi(x[::-1].copy(), 10, checkpoint=state, **kw)
    assert fresh.info["resumed_at_epoch"] == 0
    state.write_bytes(b"not a safetensors file")  # a damaged state: a fresh start too
    assert np.array_equal(temi(x, 10, checkpoint=state, **kw).probs, full.probs)


def test_official_schedule_lr_warmup_and_step_budget():
    from cedm.clusters.temi import CPU_SCHEDULE, PAPER_SCHEDULE, lr_at, resolve_settings, schedule_steps
    # the demo's size with the paper's batch: 6 steps per epoch (last partial batch dropped), 20 warm-up epochs
    assert schedule_steps(3391, 512, 200, 20) == (512, 6, 200, 120)
    # a step budget runs fewer epochs, the warm-up in proportion (10% of them)
    assert schedule_steps(50_000, 512, 200, 20, max_steps=2000) == (512, 97, 20, 2 * 97)
    assert schedule_steps(100, 512, 200, 20, max_steps=2000) == (100, 1, 200, 20)
    base = 1e-4 * 512 / 256
    lrs = [lr_at(i, base, 120) for i in range(200)]
    assert lrs[0] == 0 and math.isclose(lrs[119], base) and lrs[120:] == [base] * 80
    assert all(a < b for a, b in zip(lrs[:119], lrs[1:120]))  # linear warm-up
    cpu, paper = resolve_settings("cpu"), resolve_settings("cuda")
    for k in ("epochs", "batch_size", "teacher_momentum", "lr", "warmup_epochs", "nlayers", "inputs"):
        assert cpu[k] == paper[k], k  # the CPU default differs only in heads and the step budget
    assert paper["heads"] == PAPER_SCHEDULE["heads"] == 50 and cpu["heads"] == CPU_SCHEDULE["heads"] < 50
    assert paper["max_steps"] == 0 and cpu["max_steps"] == CPU_SCHEDULE["max_steps"] > 0
    assert paper["teacher_momentum"] == 0.996 and paper["inputs"] == "raw"


def test_raw_and_l2_inputs_and_old_heads_load(tmp_path):
    x, _ = blobs(0.1, per=20)
    scaled = x * np.linspace(1, 20, len(x), dtype=np.float32)[:, None]  # same directions, varied norms
    raw = temi(scaled, 10, **dict(FAST, epochs=2))
    l2 = temi(scaled, 10, **dict(FAST, epochs=2, inputs="l2"))
    assert raw.head.inputs == "raw" and l2.head.inputs == "l2"
    # an L2 head depends on directions only; predict_proba applies each head's own transform
    assert np.allclose(predict_proba(l2.head, scaled), predict_proba(l2.head, x), atol=1e-5)
    assert np.allclose(predict_proba(raw.head, scaled), raw.probs, atol=1e-5)
    # a head saved before the official recipe (3 layers, L2 inputs, no such keys in its json) still loads
    old = MultiHead(1, x.shape[1], 10, hidden_dim=16, bottleneck_dim=8, nlayers=3, inputs="l2")
    save_head(old, tmp_path / "old")
    cfg = json.loads((tmp_path / "old.json").read_text())
    for k in ("nlayers", "inputs"):
        cfg.pop(k)
    (tmp_path / "old.json").write_text(json.dumps(cfg))
    back, _ = load_head(tmp_path / "old")
    assert back.nlayers == 3 and back.inputs == "l2"
    assert np.allclose(predict_proba(back, scaled), predict_proba(old, x), atol=1e-5)


def test_batched_heads_equal_per_head_loop():
    torch.manual_seed(0)
    h, d, c = 3, 16, 7
    heads = MultiHead(h, d, c, hidden_dim=12, bottleneck_dim=8)
    with torch.no_grad():
        heads.g.uniform_(0.5, 2.0)
    x = torch.nn.functional.normalize(torch.randn(10, d), dim=-1)
    out = heads(x)
    F = torch.nn.functional
    for i in range(h):  # plain per-head computation with the same weights: in -> 12 -> 8 (official nlayers 2)
        z = F.gelu(x @ heads.w1[i] + heads.b1[i])
        z = F.normalize(z @ heads.w2[i] + heads.b2[i], dim=-1)
        w = heads.g[i] * heads.v[i] / heads.v[i].norm(dim=0, keepdim=True)
        assert torch.allclose(out[i], z @ w, atol=1e-6)
        assert torch.allclose(heads.select(i)(x)[0], out[i], atol=1e-6)
    old = MultiHead(h, d, c, hidden_dim=12, bottleneck_dim=8, nlayers=3)  # heads saved before: 3 layers
    out3 = old(x)
    for i in range(h):
        z = F.gelu(x @ old.w1[i] + old.b1[i])
        z = F.gelu(z @ old.w2[i] + old.b2[i])
        z = F.normalize(z @ old.w3[i] + old.b3[i], dim=-1)
        w = old.g[i] * old.v[i] / old.v[i].norm(dim=0, keepdim=True)
        assert torch.allclose(out3[i], z @ w, atol=1e-6)
    # the loss: log-space batched form == the paper's formula head by head
    s, t = torch.randn(h, 10, c), torch.randn(h, 10, c)
    prior = torch.softmax(torch.randn(h, c), -1)
    gamma, b = 0.6, 5
    got = temi_loss(s, t, prior, gamma, 0.1, 0.1)
    ps, pt = torch.softmax(s / 0.1, -1), torch.softmax(t / 0.1, -1)
    weight = torch.stack([(pt[i, :b] * pt[i, b:]).sum(-1) for i in range(h)]).mean(0)
    for i in range(h):
        def pmi(p1, p2):
            return -(weight * torch.log((((p1 * p2) ** gamma) / prior[i]).sum(-1))).mean()
        want = 0.5 * (pmi(ps[i, :b], pt[i, b:]) + pmi(ps[i, b:], pt[i, :b]))
        assert torch.allclose(got[i], want, atol=1e-5)


def test_temi_guard_rails():
    x, _ = blobs(0.1, per=3)
    with pytest.raises(CedmError, match="at most 30"):
        temi(x, 31, **FAST)
    with pytest.raises(CedmError, match="at most 30"):
        kmeans(x, 31)
    with pytest.raises(CedmError, match="unknown TEMI setting"):
        temi(x, 5, heds=3)
    with pytest.raises(CedmError):
        kmeans(np.zeros((0, 4), np.float32), 2)


# --- the bound -----------------------------------------------------------------------------------
def test_search_is_logarithmic_and_exact_on_a_step():
    for true_max in (13, 700, 5000):
        calls = []

        def r(c):
            calls.append(c)
            return 1.0 if c <= true_max else 0.5

        c_max, curve, complete, _ = bound.search_upper_bound(r, 100_000, c0=10)
        assert c_max == true_max and complete
        # doubling (one extra to confirm the failure), 3 grid points, then bisection of one grid step
        step = true_max  # upper bound on the grid step: the last two doublings are at most 2 C_max apart
        limit = math.ceil(math.log2(true_max / 10)) + 3 + bound.GRID_INTERVALS + math.ceil(math.log2(step / 4)) + 1
        assert len(calls) == len(set(calls)) <= limit


# The official C-EDM repository's CIFAR-10 TEMI runs (DINO ViT-B/16, beta 0.6): C -> clusters used ("uniq"
# column of cluster_ids/cifar10/TEMI-dino_vitb16/results.md, HHU-MMBS/cedm-official-wavc2025).
CIFAR10_UNIQ = {10: 10, 34: 34, 50: 50, 100: 100, 125: 125, 150: 148, 200: 199, 250: 249, 300: 295, 350: 343,
                400: 391, 500: 490, 600: 558, 800: 741, 1000: 918, 5000: 3747, 10000: 5911}


def cifar10_r(c: int) -> float:
    """r_C of the official CIFAR-10 runs, linear between the measured C."""
    cs = sorted(CIFAR10_UNIQ)
    return float(np.interp(c, cs, [CIFAR10_UNIQ[k] / k for k in cs]))


def test_c_max_rule_on_the_official_cifar10_points():
    points = {c: u / c for c, u in CIFAR10_UNIQ.items()}
    assert bound.c_max_from_curve(points, 0.96) == 500          # 0.980 at 500, 0.930 at 600
    # r_C is not monotone: 0.987 at C = 150, then 0.995 / 0.996 at 200 / 250. With alpha = 0.99 the dip at
    # 150 is an isolated failure between passes and does not end the range; 300 (0.983) does.
    assert bound.c_max_from_curve(points, 0.99) == 250
    # an isolated pass above the range is noise, not C_max
    assert bound.c_max_from_curve({10: 1.0, 20: 1.0, 40: 0.9, 80: 0.97, 160: 0.5}, 0.96) == 20
    assert bound.c_max_from_curve({10: 0.5, 20: 0.4}, 0.96) is None


def test_search_on_the_official_cifar10_curve():
    c_max, curve, complete, _ = bound.search_upper_bound(cifar10_r, 50_000, c0=10, alpha=0.96)
    # linear between (500, 0.980) and (600, 0.930): r_C >= 0.96 up to C = 540
    assert complete and c_max == max(c for c in range(500, 601) if cifar10_r(c) >= 0.96) == 540
    assert 640 in curve and 1280 in curve  # the failure at 640 was confirmed by the next doubling
    # alpha = 0.99: the doubling meets the dip (r_160 = 0.989) but goes on, since r_320 = 0.982 fails too
    c_max, curve, _, _ = bound.search_upper_bound(cifar10_r, 50_000, c0=10, alpha=0.99)
    assert c_max == max(c for c in range(80, 161) if cifar10_r(c) >= 0.99)


def test_search_steps_over_a_dip_of_a_non_monotone_curve():
    dip = lambda c: 0.9 if 35 <= c <= 45 else (1.0 if c <= 300 else 0.5)  # noqa: E731
    c_max, curve, complete, _ = bound.search_upper_bound(dip, 10_000, c0=10)
    assert curve[40] == 0.9 and c_max == 300 and complete
    blip = lambda c: 1.0 if c <= 50 or 70 <= c <= 72 else 0.5  # noqa: E731  (an isolated pass above)
    assert bound.search_upper_bound(blip, 10_000, c0=10)[0] == 50


def test_search_guard_rails():
    c_max, curve, complete, msg = bound.search_upper_bound(lambda c: 1.0, 100, c0=10)
    assert c_max == 100 and not complete and "no bound below the dataset size" in msg
    assert [c for c, _ in sorted(curve.items())] == [10, 20, 40, 80, 100]
    c_max, _, complete, msg = bound.search_upper_bound(lambda c: 1.0 if c <= 4 else 0.0, 100, c0=10)
    assert c_max == 4 and complete  # the first C already fails: search below it
    c_max, _, _, msg = bound.search_upper_bound(lambda c: 0.0, 100, c0=10)
    assert c_max is None and "C = 2" in msg
    with pytest.raises(CedmError, match="between 2 and 100"):
        bound.search_upper_bound(lambda c: 1.0, 100, c0=200)
    with pytest.raises(CedmError, match="gamma = 0.6"):
        bound.upper_bound(np.eye(4, dtype=np.float32), gamma=1.0)


def test_upper_bound_with_temi(monkeypatch):
    x, _ = blobs(0.0)  # 10 distinct points, 60 copies each: TEMI cannot use more than 10 clusters
    calls = []
    import cedm.clusters.temi as temi_mod
    real = temi_mod.temi

    def counting(*a, **k):
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(temi_mod, "temi", counting)  # bound imports temi at call time, so it sees this
    res = bound.upper_bound(x, c0=8, **FAST)
    assert res.c_max == 10 and res.complete
    assert dict(res.curve)[10] >= 0.96 and dict(res.curve)[11] < 0.96
    assert res.n_runs == len(calls) == len(res.curve) <= 7 and len(set(calls)) == len(calls)


def test_lower_bound_gamma_one_collapses_to_true_count():
    x, _ = blobs(0.1)
    lb = bound.lower_bound(x, 100, **FAST)
    assert lb.c_start == 100 and 8 <= lb.c_star <= 12
    with pytest.raises(CedmError, match="between 2 and 600"):
        bound.lower_bound(x, 601)


# --- workspaces ----------------------------------------------------------------------------------
@pytest.fixture
def toy_ws(home, monkeypatch):
    """A 40-image workspace whose 'features' are 4 noisy blobs (a fake cedm.features module)."""
    import cedm
    import cedm.features.backbones  # noqa: F401  (the real registry, which the CLI's parser reads)
    from cedm.workspace import create_from_array

    x, y = blobs(0.05, k=4, per=10, d=32)
    imgs = np.zeros((40, 8, 8, 3), np.uint8)
    imgs[:, 0, 0, 0] = np.arange(40)
    ws = create_from_array(home, "toy", imgs, labels=[f"class{i}" for i in y])
    fake = types.ModuleType("cedm.features")
    fake.DEFAULT_BACKBONE, fake.OFFLINE_BACKBONE = "dino_vitb16", "efficientnet_lite0"
    fake.calls = 0

    def get_features(w, backbone, weights=None, normalized=True):
        fake.calls += 1
        assert w.n == 40
        return x  # unit rows: the same raw or normalised
    fake.get_features = get_features
    monkeypatch.setitem(sys.modules, "cedm.features", fake)
    monkeypatch.setattr(cedm, "features", fake, raising=False)
    return ws, y, fake


def test_cluster_workspace_cache_and_resolve(toy_ws):
    from cedm.clusters import labelings as L
    ws, y, fake = toy_ws
    a = L.cluster_workspace(ws, "kmeans", 4)
    assert metrics.nmi(a.assignments, y) > 0.9 and fake.calls == 1 and a.artifact is not None
    b = L.cluster_workspace(ws, "kmeans", 4)
    assert fake.calls == 1 and (b.assignments == a.assignments).all()  # served from the artifact
    t = L.cluster_workspace(ws, "temi", 6, heads=2, epochs=2, hidden_dim=16, bottleneck_dim=8)
    assert (t.artifact / "probs.npy").is_file() and (t.artifact / "head.safetensors").is_file()
    t2 = L.cluster_workspace(ws, "temi", 6, heads=2, epochs=2, hidden_dim=16, bottleneck_dim=8)
    assert np.array_equal(t2.probs, t.probs) and (assign(t2.head, blobs(0.05, k=4, per=10, d=32)[0])[0]
                                                  == t.assignments).all()
    # a cancelled TEMI run leaves its state in the scratch folder; the same call resumes and clears it
    kw = dict(heads=2, epochs=4, hidden_dim=16, bottleneck_dim=8)
    with pytest.raises(Stop):
        L.cluster_workspace(ws, "temi", 5, progress=stop_after(2), **kw)
    assert L.find_clusters(ws, "temi", 5, **kw) is None  # nothing half-written as a result
    scratch = ws._writable_root() / "scratch"
    assert len(list(scratch.rglob("temi-state.safetensors"))) == 1
    r = L.cluster_workspace(ws, "temi", 5, **kw)
    assert r.info["resumed_at_epoch"] == 2 and r.artifact is not None
    assert not list(scratch.rglob("temi-state.safetensors"))
    lab = L.resolve(ws, "temi:6", heads=2, epochs=2, hidden_dim=16, bottleneck_dim=8)
    assert lab.labels.max() + 1 == t.n_used == len(lab.original_ids)  # empty clusters renumbered away
    assert (lab.original_ids[lab.labels] == t.assignments).all() and lab.probs.shape == (40, t.n_used)
    gt = L.resolve(ws, "gt")
    assert gt.class_names == ["class0", "class1", "class2", "class3"] and (gt.labels == y).all()
    for bad in ("kmeans:x", "spectral:3", "labels:nope", "kmeans:41"):
        with pytest.raises(CedmError):
            L.resolve(ws, bad)


def test_save_labeling_and_compact(toy_ws):
    from cedm.clusters import labelings as L
    ws, y, _ = toy_ws
    labels = np.where(y == 1, -1, y)  # class 1 unused, some rows unlabelled
    L.save_labeling(ws, "clip", labels, ["cat", "dog", "fish", "bird"], params={"model": "toy"})
    lab = L.resolve(ws, "labels:clip")
    assert lab.class_names == ["cat", "fish", "bird"] and lab.original_ids.tolist() == [0, 2, 3]
    assert (lab.labels[y == 1] == -1).all() and (lab.labels[y == 2] == 1).all()
    assert lab.q.tolist() == pytest.approx([1 / 3] * 3)
    assert L.list_labelings(ws) == ["clip"]
    with pytest.raises(CedmError):
        L.save_labeling(ws, "bad name", labels, ["a", "b", "c", "d"])
    with pytest.raises(CedmError):
        L.save_labeling(ws, "short", labels[:5], ["a", "b", "c", "d"])
    with pytest.raises(CedmError):
        L.save_labeling(ws, "range", labels, ["a", "b"])


def test_row_sets_round_trip_and_resolve(toy_ws):
    from cedm.clusters import labelings as L
    ws, _, _ = toy_ws
    L.save_rows(ws, "picks", [5, 3, 3, 9])
    assert L.load_rows(ws, "picks").tolist() == [3, 5, 9] and L.list_row_sets(ws) == ["picks"]
    lab = L.resolve(ws, "rows:picks")
    assert lab.class_names == ["rest", "picks"] and np.flatnonzero(lab.labels).tolist() == [3, 5, 9]
    assert L.rows_from_paths(ws, [ws.paths[7], ws.paths[2]]).tolist() == [2, 7]
    for bad in ([], [ws.n], [-1]):
        with pytest.raises(CedmError):
            L.save_rows(ws, "bad", bad)
    with pytest.raises(CedmError, match="no row set"):
        L.resolve(ws, "rows:nope")
    with pytest.raises(CedmError, match="not in workspace"):
        L.rows_from_paths(ws, ["no/such.png"])


def test_cli_cluster_export_and_bound(toy_ws, tmp_path, capsys):
    from cedm.cli import main
    ws, y, _ = toy_ws
    out = tmp_path / "c.csv"
    assert main(["cluster", "toy", "--method", "kmeans", "--clusters", "4", "--export", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4/4 clusters used" in text and "NMI" in text and "AMI" in text
    assert "one-to-one (Hungarian)" in text and "majority" in text  # accuracy both ways, named
    assert main(["cluster", "toy", "--clusters", "4", "--kmeans-metric", "spherical"]) == 0
    assert capsys.readouterr().out.startswith("skmeans C=4")
    assert main(["cluster", "toy", "--method", "temi", "--clusters", "4", "--kmeans-metric", "spherical"]) == 2
    assert "--kmeans-metric applies to --method kmeans only" in capsys.readouterr().err
    rows = out.read_text().splitlines()
    assert rows[0] == "path,cluster,confidence" and len(rows) == 41
    assert main(["cluster", "toy", "--method", "kmeans", "--clusters", "50"]) == 2
    assert "at most 40" in capsys.readouterr().err
    assert main(["bound", "toy", "--c0", "2", "--heads", "1", "--epochs", "2"]) == 0
    text = capsys.readouterr().out
    assert "r_C" in text and ("C_max" in text or "note:" in text)
    assert main(["bound", "toy", "--lower", "--start", "20", "--heads", "1", "--epochs", "2"]) == 0
    assert "C* =" in capsys.readouterr().out


def test_bound_curve_outlives_its_clusterings(toy_ws):
    import shutil

    from cedm.clusters import bound as B
    ws, _, _ = toy_ws
    kw = dict(heads=2, epochs=2, hidden_dim=16, bottleneck_dim=8)
    res = B.upper_bound(ws, c0=2, **kw)
    assert B.cached_curve(ws, **kw) == [(c, r) for c, r in res.curve]
    for d, _ in ws.list_artifacts("clusters"):  # ship only the curve, not every head
        shutil.rmtree(d)
    assert B.cached_curve(ws, **kw) == [(c, r) for c, r in res.curve]
    assert B.saved_results(ws, B.STAGE_UPPER, **kw)[0]["c_max"] == res.c_max
    assert B.cached_curve(ws, heads=3, epochs=2, hidden_dim=16, bottleneck_dim=8) == []  # other settings
    low = B.lower_bound(ws, c_start=20, **kw)
    assert B.saved_results(ws, B.STAGE_LOWER, **kw)[0]["c_star"] == low.c_star


def test_shipped_model_still_finds_its_spherical_clustering(tmp_path, monkeypatch):
    """The demo models were trained on spherical k-means (C = 20, params without a metric). With Euclidean
    k-means as the default they stay addressable (skmeans:20), and the app opens on that clustering."""
    from cedm.clusters import labelings as L
    from cedm.clusters.assign import condition_head, labels_hash
    from cedm.inference.confidence import load_scorer
    from cedm.model.edm import read_model_info
    from cedm.model.registry import DEFAULT_SHIPPED, SHIPPED_DIR
    from cedm.ui.cluster_views import DEFAULT_C, DEFAULT_METHOD, latest_clustering
    from cedm.workspace import open_workspace

    monkeypatch.setenv("CEDM_HOME", str(tmp_path))
    ws = open_workspace(None, "demo")
    model = SHIPPED_DIR / DEFAULT_SHIPPED
    info = read_model_info(model)
    cond = info["condition"]
    assert cond["spec"] == f"{DEFAULT_METHOD}:{DEFAULT_C}" == "skmeans:20" and "metric" not in cond["params"]
    backbone = cond["params"]["backbone"]
    found = L.find_clusters(ws, "skmeans", 20, backbone=backbone)
    assert found is not None and found == ws.find_artifact(L.STAGE_CLUSTERS, cond["params"])
    assert L.find_clusters(ws, "kmeans", 20, backbone=backbone, kmeans_metric="spherical") == found
    euclid = L.find_clusters(ws, "kmeans", 20, backbone=backbone)  # the default: its own (shipped) key
    assert euclid is not None and euclid != found
    assert L.load_clusters(found).method == "skmeans" and L.load_clusters(euclid).method == "kmeans"
    # the app opens on the model's clustering; confidence and evaluation find it (labels hash of training)
    assert latest_clustering(ws, backbone) == "skmeans:20"
    assert load_scorer(model, info).head.artifact == str(found)
    lab = L.resolve(ws, "skmeans:20", backbone=backbone)
    assert labels_hash(lab.labels) == info["provenance"]["data"]["labels_sha"]
    head, why = condition_head(model, ws)
    assert head is not None and head.artifact == str(found), why
