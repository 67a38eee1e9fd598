"""The inference engine: fast path vs the plain reference, batching of concurrent requests, isolation of
failures, the queue limit, cancellation, the model cache, and sample confidence / best-of."""
import os
import threading
import time

import numpy as np
import pytest
import torch

from cedm.errors import CedmError
from cedm.inference import Cancelled, EngineBusy, InferenceEngine, reference_sample
from cedm.inference.engine import derived_seed
from cedm.model.edm import CEDM, save_model

C = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = CEDM.from_preset("tiny", 16, C, info={"p_uncond": 0.1, "condition": {"q": [0.1, 0.2, 0.3, 0.4]}})
    return save_model(tmp_path_factory.mktemp("models") / "tiny", m)


@pytest.fixture
def engine():
    # float32: these tests compare results exactly across batch compositions (bf16 is tested on its own)
    eng = InferenceEngine(device="cpu", max_batch=64, dtype="fp32")
    yield eng
    eng.close()


class Gate:
    """A progress callback that holds the worker until released (to queue requests behind it)."""

    def __init__(self):
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, step, total):
        self.entered.set()
        assert self.release.wait(30)


def _ref(model, **kw):
    return reference_sample(model.eval(), **kw)


def test_fast_path_matches_plain_reference(engine, model_dir):
    from cedm.model.edm import load_model

    model = load_model(model_dir)
    cases = [dict(n=3, clusters=[0, 2, 3], guidance=2.5, steps=5, sampler="heun", seed=7),
             dict(n=2, clusters=1, guidance=1.0, steps=6, sampler="dpmpp2m", seed=0),
             dict(n=2, uncond=True, steps=4, sampler="euler", seed=3),
             dict(n=2, guidance=1.5, steps=4, sampler="heun", seed=11, churn=5.0)]
    for kw in cases:
        x, rec = engine.generate(model_dir, output="float", **kw)
        ref = _ref(model, **kw)
        assert x.shape == ref.shape == (kw["n"], 3, 16, 16)
        assert (x - ref).abs().max() < 1e-3, kw  # float rounding only (2B batch vs two calls)
        assert [r["seed"] for r in rec] == [kw["seed"] + i for i in range(kw["n"])]
    # the shortcut w = 1 gives what the explicit two-call guidance formula gives, and uint8 agrees
    ims, rec = engine.generate(model_dir, n=2, clusters=[1, 2], steps=3, sampler="heun", seed=4)
    ref8 = ((_ref(model, n=2, clusters=[1, 2], steps=3, sampler="heun", seed=4) + 1) * 127.5).round().clamp(0, 255)
    assert ims.dtype == np.uint8 and np.abs(ims.astype(int) - ref8.permute(0, 2, 3, 1).numpy()).max() <= 1
    assert [r["condition"] for r in rec] == [1, 2] and rec[0]["evaluations"] == 5


def test_large_cpu_calls_run_in_parallel_streams_with_the_same_result(model_dir, monkeypatch):
    """On CPU with 2+ threads a call of >= 32 rows is split over the stream threads (one core each); the images
    are those of the plain reference, and a 1-thread engine has no streams."""
    from cedm.inference import network
    from cedm.model.edm import load_model

    seen = []
    real = network.FastNet._call

    def record(self, x, sigma, labels):
        seen.append((threading.current_thread().name, x.shape[0]))
        return real(self, x, sigma, labels)

    monkeypatch.setattr(network.FastNet, "_call", record)
    kw = dict(n=20, guidance=2.0, steps=3, sampler="heun", seed=5)  # 40 rows per guided call
    with InferenceEngine(device="cpu", threads=2, dtype="fp32") as eng:
        x, _ = eng.generate(model_dir, output="float", **kw)
    assert (x - _ref(load_model(model_dir), **kw)).abs().max() < 1e-3
    streamed = [n for name, n in seen if name.startswith("cedm-stream")]
    assert streamed and set(streamed) == {20} and len(streamed) == len(seen)  # every call: two halves of 20
    seen.clear()
    with InferenceEngine(device="cpu", threads=1, dtype="fp32") as eng:
        eng.generate(model_dir, **kw)
    assert seen and not any(name.startswith("cedm-stream") for name, _ in seen)


def test_default_precision_is_bf16_where_the_cpu_has_it(model_dir, monkeypatch):
    from cedm.device import cpu_has_native_bf16
    from cedm.model.edm import load_model

    native = cpu_has_native_bf16()
    kw = dict(n=4, clusters=[0, 1, 2, 3], guidance=2.0, steps=6, sampler="heun", seed=5)
    ref = _ref(load_model(model_dir), **kw)
    with InferenceEngine(device="cpu") as eng:
        assert eng.dtype == (torch.bfloat16 if native else None)
        x, _ = eng.generate(model_dir, output="float", **kw)
    # bf16 rounding moves a sample by a few uint8 levels at most, never to another image
    assert 0 < (x - ref).abs().max() < 0.1 if native else (x - ref).abs().max() < 1e-3
    monkeypatch.setenv("CEDM_CPU_BF16", "0")
    with InferenceEngine(device="cpu", dtype="auto") as eng:
        assert eng.dtype is None
    with pytest.raises(CedmError, match="unknown dtype 'int8'"):
        InferenceEngine(device="cpu", dtype="int8")


def test_concurrent_requests_are_merged_and_routed(engine, model_dir):
    gate = Gate()
    blocker = engine.submit(model_dir, 1, clusters=0, steps=2, progress=gate)
    assert gate.entered.wait(30)
    asks = [dict(clusters=c, seed=10 * c, n=2 + c % 2) for c in range(C)] * 2
    results = [None] * len(asks)

    def client(i):
        results[i] = engine.generate(model_dir, steps=4, sampler="heun", guidance=2.0, output="float", **asks[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    while engine.stats["requests"] < 1 + len(asks):
        time.sleep(0.01)
    batches_before = engine.stats["batches"]
    gate.release.set()
    for t in threads:
        t.join(60)
    blocker.result(30)
    # the blocker's batch, then all 8 requests together in one batch of 20 rows
    assert engine.stats["batches"] - batches_before == 2
    for ask, (x, rec) in zip(asks, results):
        assert [r["condition"] for r in rec] == [ask["clusters"]] * ask["n"]
        assert [r["seed"] for r in rec] == [ask["seed"] + i for i in range(ask["n"])]
        solo, _ = engine.generate(model_dir, steps=4, sampler="heun", guidance=2.0, output="float", **ask)
        assert (x - solo).abs().max() < 1e-4
    assert engine.stats["failed"] == 0


def test_a_failing_request_does_not_affect_others(engine, model_dir):
    gate = Gate()
    blocker = engine.submit(model_dir, 1, steps=2, progress=gate)
    assert gate.entered.wait(30)

    def bad_progress(step, total):
        if step >= 2:
            raise RuntimeError("client went away")

    good = [engine.submit(model_dir, 2, clusters=c, steps=4, seed=c) for c in range(3)]
    bad_cluster = engine.submit(model_dir, 2, clusters=7, steps=4)          # fails in preparation
    bad_callback = engine.submit(model_dir, 2, clusters=1, steps=4, progress=bad_progress)  # fails mid-batch
    gate.release.set()
    blocker.result(30)
    with pytest.raises(CedmError, match="cluster 7 does not exist"):
        bad_cluster.result(30)
    with pytest.raises(RuntimeError, match="client went away"):
        bad_callback.result(30)
    for c, t in enumerate(good):
        ims, rec = t.result(30)
        assert ims.shape == (2, 16, 16, 3) and [r["condition"] for r in rec] == [c, c]

    # a network failure inside a merged batch: retried one request at a time, only the culprit fails
    lm = engine._load(engine.cached_models()[0], model_dir)  # a cache hit: the loaded model
    real = lm.net.fn

    def faulty(x, sigma, labels):
        if (labels == 3).any():
            raise RuntimeError("bad rows")
        return real(x, sigma, labels)

    lm.net.fn = faulty
    gate = Gate()
    blocker = engine.submit(model_dir, 1, clusters=0, steps=2, progress=gate)
    assert gate.entered.wait(30)
    tickets = [engine.submit(model_dir, 1, clusters=c, steps=3, seed=5) for c in range(C)]
    gate.release.set()
    for c, t in enumerate(tickets):
        if c == 3:
            with pytest.raises(RuntimeError, match="bad rows"):
                t.result(30)
        else:
            assert t.result(30)[1][0]["condition"] == c
    assert engine.stats["retries"] >= 1
    lm.net.fn = real
    assert engine.generate(model_dir, 1, clusters=3, steps=2)[0].shape == (1, 16, 16, 3)  # the worker lives on


def test_queue_limit_gives_busy(model_dir):
    with InferenceEngine(device="cpu", max_queue=2) as eng:
        gate = Gate()
        first = eng.submit(model_dir, 1, steps=2, progress=gate)
        assert gate.entered.wait(30)
        second = eng.submit(model_dir, 1, steps=2)
        with pytest.raises(EngineBusy, match="busy, try again"):
            eng.submit(model_dir, 1, steps=2)
        gate.release.set()
        first.result(30), second.result(30)
        eng.generate(model_dir, 1, steps=2)  # room again
        with pytest.raises(CedmError, match="no cedm.json"):
            eng.submit(model_dir.parent / "missing", 1)
        with pytest.raises(CedmError, match="unknown sampler"):
            eng.submit(model_dir, 1, sampler="ddim")


def test_cancellation_stops_work(engine, model_dir):
    ticket = None

    def cancel_at_2(step, total):
        if step == 2:
            ticket.cancel()

    before = engine.stats["evaluations"]
    ticket = engine.submit(model_dir, 4, steps=50, sampler="heun", progress=cancel_at_2)
    with pytest.raises(Cancelled):
        ticket.result(30)
    assert engine.stats["evaluations"] - before <= 3 * 2 + 1  # not 99: stopped right after step 2
    assert not ticket.cancel()  # already finished

    # in a merged batch only the cancelled request's rows are dropped; the other one is unchanged
    gate = Gate()
    blocker = engine.submit(model_dir, 1, steps=2, progress=gate)
    assert gate.entered.wait(30)
    ticket = engine.submit(model_dir, 3, clusters=2, steps=6, sampler="heun", progress=cancel_at_2)
    keep = engine.submit(model_dir, 2, clusters=1, steps=6, sampler="heun", seed=3, output="float")
    waiting = engine.submit(model_dir, 1, steps=99, sampler="euler")  # other settings: a later batch
    assert waiting.cancel()  # never started: settled at once
    gate.release.set()
    blocker.result(30)
    with pytest.raises(Cancelled):
        ticket.result(30)
    with pytest.raises(Cancelled):
        waiting.result(1)
    x, _ = keep.result(30)
    solo, _ = engine.generate(model_dir, 2, clusters=1, steps=6, sampler="heun", seed=3, output="float")
    assert (x - solo).abs().max() < 1e-4


def test_model_cache_is_bounded_and_keyed_by_mtime(model_dir, tmp_path):
    other = save_model(tmp_path / "other", CEDM.from_preset("tiny", 8, 0))
    with InferenceEngine(device="cpu", max_models=1) as eng:
        a, _ = eng.generate(other, 2, steps=2)  # unconditional model
        assert a.shape == (2, 8, 8, 3)
        eng.generate(model_dir, 1, steps=2)
        assert [k[0] for k in eng.cached_models()] == [str(model_dir.resolve())]
        st = os.stat(other / "cedm.json")
        os.utime(other / "cedm.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "retrained"
        eng.generate(other, 1, steps=2)
        assert len(eng.cached_models()) == 1 and eng.stats["model_loads"] == 3
        assert eng.confidence(other, a) is None  # unconditional: no confidence
        with pytest.raises(CedmError, match="unconditional"):
            eng.generate(other, 1, clusters=0, steps=2)


# --- sample confidence ---------------------------------------------------------------------------------
def _two_colour_workspace(home):
    from cedm.workspace import create_from_array

    rng = np.random.default_rng(0)
    n = 12
    base = np.zeros((2 * n, 32, 32, 3), np.float64)
    base[:n, ..., 0], base[n:, ..., 2] = 220, 220   # red squares vs blue squares
    base[:, 8:24, 8:24] = 255 - base[:, 8:24, 8:24]
    images = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return create_from_array(home, "colours", images), np.repeat([0, 1], n)


@pytest.mark.parametrize("method", ["kmeans", "temi"])
def test_confidence_assigns_dataset_images_to_their_cluster(home, model_dir, method):
    from cedm.clusters.labelings import cluster_workspace, from_clusters
    from cedm.clusters.assign import labels_hash

    ws, truth = _two_colour_workspace(home)
    # batch 8: the official lr scaling (x 8/256) would crawl; a larger base lr and a short warm-up instead.
    # 2 heads, as the other toy schedules: after these 210 steps some heads are still soft, and among the CPU
    # default's 8 the lowest-loss one can be a head whose argmax puts every image in one cluster
    extra = dict(heads=2, epochs=30, batch_size=8, knn=5, lr=3e-2, warmup_epochs=2) if method == "temi" else {}
    res = cluster_workspace(ws, method, 2, backbone="efficientnet_lite0", **extra)
    assert len(set(res.assignments[truth == 0])) == 1 and res.assignments[0] != res.assignments[-1]
    torch.manual_seed(0)
    m = CEDM.from_preset("tiny", 16, 2, info={"p_uncond": 0.1})
    # the clustering is found by the hash of the labels the model was trained on (cedm.clusters.assign.labeling_head)
    lab = from_clusters(res, f"{method}:2").compact()
    cond = {"spec": f"{method}:2", "params": res.params, "original_ids": lab.original_ids.tolist(),
            "n_conditions": 2, "q": [0.5, 0.5]}
    prov = {"data": {"labels_sha": labels_hash(lab.labels)}}
    mdir = save_model(ws.derived_dir("models") / method, m, info={"condition": cond, "provenance": prov})
    with InferenceEngine(device="cpu", dtype="fp32") as eng:  # best-of compares candidates bit for bit
        ids, msp = eng.confidence(mdir, ws.images)
        assert ids.shape == msp.shape == (ws.n,) and msp.dtype == np.float32
        assert np.all((msp >= 0.5) & (msp <= 1.0))
        # condition k of the model is cluster original_ids[k] of the clustering
        assert np.array_equal(lab.original_ids[ids], res.assignments)
        assert eng.scorer(mdir) is eng.scorer(mdir)  # resident
        other = save_model(ws.derived_dir("models") / f"{method}-swapped", m,
                           info={"condition": {**cond, "original_ids": [1, 0]}, "provenance": prov})
        with pytest.raises(CedmError, match="does not match the model's 2 conditions"):
            eng.confidence(other, ws.images[:2])
        if method == "kmeans":
            _check_best_of(eng, mdir)
    if method == "kmeans":  # the command line goes through the engine too
        import json

        from cedm.cli import main

        assert main(["sample", str(mdir), "--n", "2", "--cluster", "1", "--best-of", "2", "--steps", "2",
                     "--out", str(home / "s")]) == 0
        lines = [json.loads(x) for x in (home / "s" / "samples.jsonl").read_text().splitlines()]
        assert [r["condition"] for r in lines] == [1, 1] and all(0 < r["confidence"] <= 1 for r in lines)


def _check_best_of(eng, mdir):
    ims, rec = eng.generate(mdir, 2, clusters=0, best_of=3, steps=3, seed=20)
    scorer = eng.scorer(mdir)
    for i, r in enumerate(rec):
        cands = [eng.generate(mdir, 1, clusters=0, steps=3, seed=derived_seed(20 + i, j))[0][0] for j in range(3)]
        p = scorer.proba(np.stack(cands))[:, 0]
        assert r["candidate"] == int(p.argmax()) and abs(r["confidence"] - p.max()) < 1e-5
        assert np.array_equal(ims[i], cands[r["candidate"]]) and r["seed"] == derived_seed(20 + i, r["candidate"])
    with pytest.raises(CedmError, match="best-of"):
        eng.generate(mdir, 1, uncond=True, best_of=2, steps=2)


def test_shipped_model_finds_its_clustering_in_the_demo(home):
    from pathlib import Path

    from cedm.inference.confidence import load_scorer
    from cedm.model.edm import read_model_info
    from cedm.workspace import DEMO_DIR, REPO_ROOT

    model = REPO_ROOT / "checkpoints" / "demo-kmeans20"
    head = load_scorer(model, read_model_info(model)).head
    assert Path(head.artifact).is_relative_to(DEMO_DIR) and head.spec == "skmeans:20"
    assert head.backbone == "efficientnet_lite0" and len(head.model_ids) == 20
