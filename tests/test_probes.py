"""Probes (seed 004): guidance against the exact Gaussian-mixture denoiser, probes on a tiny model's features,
rejection, few-shot row sets, the command line."""
import math

import numpy as np
import pytest
import torch

from cedm.errors import CedmError
from cedm.model.edm import CEDM, save_model
from cedm.probes.guidance import classifier_guidance, select_candidates
from cedm.probes.probe import (
    ProbeSettings,
    get_probe,
    load_probe,
    save_probe,
    train_probe,
)
from cedm.probes.sample import generate_with_probe
from cedm.sampling.samplers import SAMPLERS, edm_sigmas
from tests.gmm import GaussianMixtureDenoiser

D = 16
STDS, WEIGHTS = [0.4, 0.5, 0.6], [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def gmm():
    means = torch.randn(3, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1.5
    return GaussianMixtureDenoiser(means, STDS, WEIGHTS)


def true_log_posterior(gmm, x, sigma):
    """log p(k | x; sigma) of the noised mixture, in closed form (differentiable in x)."""
    xf, mu = x.reshape(len(x), -1), gmm.means.reshape(3, -1)
    var = gmm.stds ** 2 + torch.as_tensor(sigma, dtype=torch.float64) ** 2
    sq = ((xf[:, None, :] - mu[None]) ** 2).sum(-1)
    logr = gmm.weights.log() - 0.5 * xf.shape[1] * var.log() - sq / (2 * var)
    return torch.log_softmax(logr, dim=1)


@pytest.mark.parametrize("through_denoiser", [False, True])
def test_true_classifier_guidance_is_the_exact_conditional_denoiser(gmm, through_denoiser):
    """D + sigma^2 grad log p(k | x; sigma) = D_k (Tweedie); w scales the step linearly."""
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    k = torch.arange(64) % 3
    for sigma in (0.05, 0.5, 2.0, 20.0):
        s = torch.tensor(sigma, dtype=torch.float64)
        guided = classifier_guidance(lambda x, t: gmm(x, t), lambda x, t, d: true_log_posterior(gmm, x, t), k, 1.0,
                                     through_denoiser=through_denoiser)
        out = guided(x, s)
        exact = torch.stack([gmm.conditional(x[i:i + 1], s, int(k[i]))[0] for i in range(64)])
        assert torch.allclose(out, exact, atol=1e-8, rtol=1e-6), sigma
        d0 = gmm(x, s)
        half = classifier_guidance(lambda x, t: gmm(x, t), lambda x, t, d: true_log_posterior(gmm, x, t), k, 0.5)(x, s)
        assert torch.allclose(half, d0 + 0.5 * (exact - d0), atol=1e-8)
    assert classifier_guidance(gmm, None, k, 0.0) is gmm  # w = 0: the denoiser itself


@pytest.mark.parametrize("sampler,steps", [("heun", 18), ("dpmpp2m", 20)])
def test_guided_sampling_moves_mass_to_the_chosen_component(gmm, sampler, steps):
    n, sig = 1500, edm_sigmas(steps)
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sig[0]
    k = torch.full((n,), 2)
    base = SAMPLERS[sampler](lambda x, s: gmm(x, s), x, sig)
    frac0 = float((torch.cdist(base, gmm.means).argmin(1) == 2).double().mean())
    assert abs(frac0 - WEIGHTS[2]) < 0.05
    # the true noisy posterior: exactly the conditional sampler's distribution
    out = SAMPLERS[sampler](classifier_guidance(lambda x, s: gmm(x, s),
                                                lambda x, s, d: true_log_posterior(gmm, x, s), k, 1.0), x, sig)
    assert float((torch.cdist(out, gmm.means).argmin(1) == 2).double().mean()) > 0.99
    err = ((out.mean(0) - gmm.means[2]) ** 2).mean().sqrt()
    assert err < 4 * STDS[2] / math.sqrt(n) + 0.01
    assert abs(float((out - out.mean(0)).pow(2).mean().sqrt()) / STDS[2] - 1) < 0.08
    # the paper's route: p(k | x0_hat(x)), the classifier of x0 re-noised at a fixed level (1.0), through D:
    # approximate, but nearly all mass goes to the component, with about its spread
    out = SAMPLERS[sampler](classifier_guidance(lambda x, s: gmm(x, s),
                                                lambda x, s, d: true_log_posterior(gmm, d, 1.0), k, 1.0), x, sig)
    near = torch.cdist(out, gmm.means).argmin(1) == 2
    assert float(near.double().mean()) > 0.99
    assert abs(float((out[near] - gmm.means[2]).pow(2).mean().sqrt()) / STDS[2] - 1) < 0.25


# --- probes on a tiny, randomly initialised model ----------------------------------------------------------
def colour_images(n_per: int, seed: int = 0, size: int = 16):
    """Two classes: reddish vs bluish noisy squares."""
    rng = np.random.default_rng(seed)
    base = np.zeros((2 * n_per, size, size, 3), np.float64)
    base[:n_per, ..., 0], base[n_per:, ..., 2] = 200, 200
    base[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255 - base[:, size // 4: 3 * size // 4,
                                                                           size // 4: 3 * size // 4]
    imgs = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return imgs, np.repeat([0, 1], n_per)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CEDM.from_preset("tiny", 16, 0).eval().requires_grad_(False)


FAST = dict(train_steps=150, repeats=1, batch=64, hidden=32)


@pytest.mark.parametrize("route", ["x0", "noised"])
def test_probe_learns_a_two_class_task_on_random_features(tiny, route, tmp_path):
    imgs, y = colour_images(40)
    probe = train_probe(tiny, imgs, y, ["red", "blue"], ProbeSettings(route=route, **FAST))
    rep = probe.info["report"]
    assert rep["n_heldout"] == 16 and rep["n_train"] == 64
    low = rep["sigma_bins"][0]
    assert low["accuracy"] >= 0.9 and low["sigma"] == [0.002, 0.1]
    assert rep["sigma_bins"][-1]["accuracy"] <= 0.9  # at sigma 10..80 the colours are drowned (no leak)
    # labels shuffled: nothing to learn, held-out accuracy near chance
    y_bad = np.random.default_rng(1).permutation(y)
    bad = train_probe(tiny, imgs, y_bad, None, ProbeSettings(route=route, **FAST))
    assert bad.info["report"]["sigma_bins"][0]["accuracy"] < 0.85
    # round trip: same probabilities; another model's weights are refused
    save_probe(probe, tmp_path / "p")
    again = load_probe(tmp_path / "p", tiny)
    x = torch.from_numpy(imgs[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert np.allclose(again.proba_images(x), probe.proba_images(x), atol=1e-6)
    torch.manual_seed(1)
    other = CEDM.from_preset("tiny", 16, 0)
    with pytest.raises(CedmError, match="another model"):
        load_probe(tmp_path / "p", other)
    with pytest.raises(CedmError, match="not a probe folder"):
        load_probe(tmp_path, tiny)


def test_probe_settings_and_labels_are_checked(tiny):
    with pytest.raises(CedmError, match="unknown probe route"):
        ProbeSettings(route="eps")
    with pytest.raises(CedmError, match="unknown denoiser block"):
        train_probe(tiny, *colour_images(4), settings=ProbeSettings(blocks=("middle",), **FAST))
    with pytest.raises(CedmError, match="at least two classes"):
        train_probe(tiny, colour_images(4)[0], np.zeros(8, np.int64), settings=ProbeSettings(**FAST))


def test_select_candidates_best_and_threshold():
    p = np.array([[0.1, 0.7, 0.3], [0.2, 0.1, 0.05], [0.6, 0.9, 0.2]])
    best, ok = select_candidates(p)
    assert best.tolist() == [1, 0, 1] and ok.all()
    first, ok = select_candidates(p, threshold=0.5)
    assert first.tolist() == [1, 0, 0] and ok.tolist() == [True, False, True]
    with pytest.raises(CedmError):
        select_candidates(p, threshold=1.5)


class MixtureCEDM(CEDM):
    """A tiny CEDM whose denoiser is the exact one of a Gaussian mixture of images (one mean image per class)
    and whose features still come from its randomly initialised UNet (it runs on every call): guidance then has
    a known right answer (samples near the target class's mean image) while the probe reads real UNet features."""

    def __init__(self, unet, means: torch.Tensor, std: float, weights):
        super().__init__(unet, 0)
        self.gmm = GaussianMixtureDenoiser(means.reshape(len(means), -1), [std] * len(means), weights)

    def forward(self, x, sigma, class_labels=None):
        unet_out = super().forward(x, sigma, class_labels)  # the feature hooks fire in here
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        xf = x.reshape(len(x), -1).double()
        if len(s) == 1:
            d = self.gmm.unconditional(xf, s[0])
        else:
            d = torch.cat([self.gmm.unconditional(xf[i:i + 1], s[i]) for i in range(len(x))])
        return d.reshape(x.shape).float() + 0 * unet_out


def mixture_model(imgs, labels, weights, std=0.35):
    torch.manual_seed(0)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).double() / 127.5 - 1
    means = torch.stack([x[torch.from_numpy(labels == k)].mean(0) for k in range(2)])
    return MixtureCEDM(CEDM.from_preset("tiny", imgs.shape[1], 0).unet, means, std, weights).eval()


def _class_of(model, images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).double().reshape(len(images), -1) / 127.5 - 1
    return torch.cdist(x, model.gmm.means.reshape(2, -1)).argmin(1).numpy()


def test_rejection_keeps_the_most_probable_candidate_reproducibly(tiny, tmp_path):
    imgs, y = colour_images(30)
    probe = train_probe(tiny, imgs, y, ["red", "blue"], ProbeSettings(**FAST))
    save_probe(probe, tmp_path / "p")
    kw = dict(n=6, targets=1, steps=4, sampler="dpmpp2m", seed=7, batch_size=12, w=0.0)
    _, plain = generate_with_probe(tiny, probe, **kw)
    p_plain = np.array([r["probe_probability"] for r in plain])
    a, rec_a = generate_with_probe(tiny, probe, best_of=4, **kw)
    b, rec_b = generate_with_probe(tiny, probe, best_of=4, **kw)
    assert np.array_equal(a, b) and rec_a == rec_b  # reproducible by seed
    p_best = np.array([r["probe_probability"] for r in rec_a])
    assert (p_best >= p_plain - 1e-6).all()  # candidate 0 is the plain image: the best is at least as probable
    assert any(r["candidate"] > 0 for r in rec_a) and all(r["candidate"] in range(4) for r in rec_a)
    t = float(np.median(p_best))
    _, rec_t = generate_with_probe(tiny, probe, best_of=4, threshold=t, **kw)
    for r in rec_t:
        assert (r["probe_probability"] >= t) == r["accepted"]
    with pytest.raises(CedmError, match="threshold needs"):
        generate_with_probe(tiny, probe, threshold=0.5, **{**kw, "w": 1.0})
    with pytest.raises(CedmError, match="probe class 5 does not exist"):
        generate_with_probe(tiny, probe, **{**kw, "targets": 5})


def test_probe_guidance_moves_samples_to_the_class_on_a_mixture_model(tmp_path):
    """Real UNet features, exact mixture denoiser: a modest weight moves most samples to the rarer class. (With
    these random features a sharp probe overshoots at w >= 1 when the x0 estimate is still the mixture mean:
    the paper's caveat; the demo measurement in docs/probes.md picks w for a trained model.)"""
    imgs, y = colour_images(30)
    model = mixture_model(imgs, y, [0.8, 0.2])
    probe = train_probe(model, imgs, y, ["red", "blue"], ProbeSettings(sigma_feature=1.0, **{**FAST, "hidden": 0}))
    assert probe.info["report"]["clean"]["accuracy"] >= 0.9
    save_probe(probe, tmp_path / "p")
    kw = dict(n=16, targets=1, steps=6, sampler="heun", seed=0, batch_size=16)
    plain, _ = generate_with_probe(model, probe, w=0.0, **kw)
    guided, rec = generate_with_probe(model, probe, w=0.3, **kw)
    assert _class_of(model, plain).mean() < 0.4
    assert _class_of(model, guided).mean() >= 0.6
    assert np.mean([r["probe_probability"] for r in rec]) > 0.5


def test_five_pick_few_shot_probe_trains_caches_and_guides(home, tmp_path):
    from cedm.clusters.labelings import save_rows
    from cedm.probes.probe import probe_labels
    from cedm.workspace import create_from_array

    imgs, y = colour_images(30, size=16)
    picks = [30, 33, 41, 47, 52]  # five bluish images; the other blue ones are made red
    imgs[[i for i in range(30, 60) if i not in picks]] = imgs[:25]
    y = np.isin(np.arange(60), picks).astype(np.int64)
    model = mixture_model(imgs, y, [55 / 60, 5 / 60])
    ws = create_from_array(home, "few", imgs)
    save_rows(ws, "picks", picks)
    settings = ProbeSettings(sigma_feature=1.0, **FAST)
    probe, folder, trained = get_probe(ws, model, "rows:picks", settings)
    assert trained and probe.info["default_target"] == 1 and probe.class_names == ["rest", "picks"]
    assert probe.info["report"]["n_heldout"] >= 2
    again, folder2, trained2 = get_probe(ws, model, "rows:picks", settings)
    assert not trained2 and folder2 == folder  # cached by model, labeling and settings
    assert folder.is_relative_to(home)
    # the same picks as a CSV of paths give the same labels
    csv = tmp_path / "picks.csv"
    csv.write_text("path\n" + "\n".join(ws.paths[i] for i in picks) + "\n")
    assert np.array_equal(probe_labels(ws, str(csv)).labels, probe_labels(ws, "rows:picks").labels)
    (tmp_path / "bad.csv").write_text("nope.png\n")
    with pytest.raises(CedmError, match="not in workspace"):
        probe_labels(ws, str(tmp_path / "bad.csv"))
    kw = dict(n=8, steps=4, sampler="heun", seed=3, batch_size=8)
    plain, rec0 = generate_with_probe(model, again, w=0.0, **kw)
    guided, rec = generate_with_probe(model, again, w=0.3, **kw)  # targets default to the picks
    assert all(r["probe_class"] == 1 and r["probe_guidance"] == 0.3 for r in rec)
    assert not np.array_equal(plain, guided)  # same noise, guided elsewhere
    assert np.array_equal(plain, generate_with_probe(model, again, w=0.0, **kw)[0])


def test_probe_command(home, tiny, tmp_path, capsys):
    from cedm.cli import main
    from cedm.clusters.labelings import save_rows
    from cedm.workspace import create_from_array

    imgs, y = colour_images(12)
    ws = create_from_array(home, "cli", imgs)
    save_rows(ws, "blue", np.flatnonzero(y == 1))
    mdir = save_model(tmp_path / "m", tiny)
    args = ["probe", "cli", "--model", str(mdir), "--labels", "rows:blue", "--train-steps", "50", "--repeats", "1",
            "--hidden", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trained:" in out and "held-out, sigma in [0.002, 0.1)" in out
    assert main(args) == 0 and "cached:" in capsys.readouterr().out
    assert main(["probe", "cli", "--model", str(mdir), "--labels", "rows:none"]) == 2
    assert "no row set named 'none'" in capsys.readouterr().err
    assert main(["probe", "cli", "--model", str(mdir), "--labels", "rows:blue", "--route", "x0",
                 "--sigma-feature", "-1"]) == 2


# --- the inference engine ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_setup(tmp_path_factory):
    """A tiny C-EDM (3 conditions, label dropout) saved as a model, and a probe on its no-condition branch."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("probe-engine")
    model = CEDM.from_preset("tiny", 16, 3, info={"p_uncond": 0.1, "condition": {"q": [0.2, 0.3, 0.5]}})
    mdir = save_model(d / "cedm", model)
    from cedm.model.edm import load_model
    model = load_model(mdir)
    imgs, y = colour_images(20)
    probe = train_probe(model, imgs, y, ["red", "blue"], ProbeSettings(**FAST))
    return mdir, model, save_probe(probe, d / "probe")


def test_engine_serves_probe_guidance_like_the_library_and_cancels(engine_setup):
    from cedm.inference.engine import Cancelled, InferenceEngine
    from cedm.probes.kind import probe_spec

    mdir, model, pdir = engine_setup
    with InferenceEngine(device="cpu", dtype="fp32", max_batch=16) as eng:
        # probe toward class 1 on the unconditional branch; best of 2 by the probe's probability
        g = probe_spec(pdir, w=1.0)
        x, rec = eng.generate(mdir, 3, clusters=1, guidance=g, steps=3, sampler="dpmpp2m", seed=5, best_of=2,
                              output="float")
        ref, ref_rec = generate_with_probe(model, pdir, 3, targets=1, w=1.0, steps=3, sampler="dpmpp2m", seed=5,
                                           best_of=2, output="float")
        assert (x - ref).abs().max() < 1e-4
        assert [r["candidate"] for r in rec] == [r["candidate"] for r in ref_rec]
        assert all(r["probe_class"] == 1 and r["condition"] is None and r["guided_by"] == "probe" for r in rec)
        # classifier-free guidance toward the C-EDM's condition 2 plus the probe toward class 0, together
        both = probe_spec(pdir, w=1.0, cfg=2.0, condition=2)
        x2, rec2 = eng.generate(mdir, 2, clusters=0, guidance=both, steps=3, sampler="dpmpp2m", seed=5,
                                output="float")
        ref2, _ = generate_with_probe(model, pdir, 2, targets=0, w=1.0, condition=2, cfg=2.0, steps=3,
                                      sampler="dpmpp2m", seed=5, output="float")
        assert (x2 - ref2).abs().max() < 1e-4
        assert rec2[0]["condition"] == 2 and rec2[0]["probe_class"] == 0 and rec2[0]["cfg"] == 2.0
        with pytest.raises(CedmError, match="probe class 7 does not exist"):
            eng.generate(mdir, 1, clusters=7, guidance=g, steps=2)
        with pytest.raises(CedmError, match="condition 9 does not exist"):
            eng.generate(mdir, 1, guidance=probe_spec(pdir, condition=9), steps=2)
        # cancel stops a probe-guided request right after the step it was asked at
        ticket = None

        def cancel_at_2(step, total):
            if step == 2:
                ticket.cancel()

        before = eng.stats["evaluations"]
        ticket = eng.submit(mdir, 2, clusters=1, guidance=g, steps=40, sampler="euler", progress=cancel_at_2)
        with pytest.raises(Cancelled):
            ticket.result(60)
        assert eng.stats["evaluations"] - before <= 3


def test_probe_spec_refuses_other_models_and_bad_folders(engine_setup, tmp_path):
    from cedm.inference.engine import InferenceEngine
    from cedm.probes.kind import probe_spec

    mdir, _, pdir = engine_setup
    with pytest.raises(CedmError, match="not a probe folder"):
        probe_spec(tmp_path)
    torch.manual_seed(5)
    other = save_model(tmp_path / "other", CEDM.from_preset("tiny", 16, 3, info={"p_uncond": 0.1}))
    with InferenceEngine(device="cpu", dtype="fp32") as eng:
        with pytest.raises(CedmError, match="another model"):
            eng.generate(other, 1, guidance=probe_spec(pdir), steps=2)


def test_sample_command_with_a_probe(engine_setup, tmp_path, capsys):
    import json

    from cedm.cli import main

    mdir, _, pdir = engine_setup
    out = tmp_path / "s"
    args = ["sample", str(mdir), "--probe", str(pdir), "--cluster", "1", "--guidance", "2", "--n", "2", "--steps",
            "2", "--sampler", "euler", "--best-of", "2", "--dtype", "fp32", "--out", str(out)]
    assert main(args) == 0
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["probe_class"] == 1 and r["guidance_kind"] == "probe" for r in recs)
    assert all(r["guidance"] == 2.0 and r["best_of"] == 2 for r in recs)
    assert main(args[:-2] + ["--condition", "1", "--cfg", "2", "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["sample", str(mdir), "--condition", "1"]) == 2
    assert "--condition goes with --probe" in capsys.readouterr().err
    assert main(["sample", str(mdir), "--probe", str(tmp_path), "--n", "1"]) == 2
    assert "not a probe folder" in capsys.readouterr().err


def test_eval_of_probe_guided_sampling_uses_the_labelings_own_assigner(home, tiny, tmp_path, capsys):
    import json

    from cedm.cli import main
    from cedm.clusters import labelings
    from cedm.clusters.assign import labeling_head
    from cedm.probes.evaluate import evaluate_probe
    from cedm.workspace import create_from_array

    imgs, y = colour_images(12, size=32)
    ws = create_from_array(home, "evalprobe", imgs)
    km = labelings.resolve(ws, "kmeans:2", backbone="efficientnet_lite0")
    mdir = save_model(tmp_path / "m", tiny)
    _, pdir, _ = get_probe(ws, tiny, "kmeans:2", ProbeSettings(**FAST), model_dir=mdir)  # backbone found cached
    head, why = labeling_head(ws, "kmeans:2", json.loads((pdir / "probe.json").read_text())["labels_sha"])
    assert why is None and head.method == "kmeans"
    assert labeling_head(ws, "kmeans:2", "0" * 16)[0] is None
    out = evaluate_probe(mdir, pdir, ws, n=6, weights=(0, 1), steps=2, sampler="euler", batch_size=6,
                         out_dir=tmp_path / "eval")
    assert [r["probe_guidance"] for r in out["results"]] == [0.0, 1.0]
    for r in out["results"]:
        assert r["FD_EffNetLite0"] > 0 and 0 <= r["agreement"] <= 1 and 0 < r["probe_probability"] < 1
        assert r["agreement_classifier"]["spec"] == "kmeans:2"  # the clustering's centroids, not the probe
        assert r["agreement_classifier"]["artifact"] == str(labelings.find_clusters(
            ws, "kmeans", 2, backbone="efficientnet_lite0"))
    assert len(list((tmp_path / "eval").glob("probe-*.json"))) == 2
    assert km.n_classes == 2
    assert main(["eval", str(mdir), "--workspace", "evalprobe", "--probe", str(pdir), "--guidance", "1", "--n", "4",
                 "--steps", "2", "--sampler", "euler"]) == 0
    assert "kmeans:2" in capsys.readouterr().out


def test_adapt_tab_helpers_and_the_app_builds(home, tmp_path, monkeypatch):
    from cedm import workspace as wsp
    from cedm.ui import probe_tab
    from cedm.ui.app import build_app
    from cedm.workspace import create_from_array

    ws = create_from_array(home, "tab", colour_images(6)[0])
    assert probe_tab.spec_of(ws, probe_tab.PICKS, None, None, "1, 3 5", "mine") == "rows:mine"
    from cedm.clusters.labelings import load_rows
    assert load_rows(ws, "mine").tolist() == [1, 3, 5]
    assert probe_tab.spec_of(ws, probe_tab.ROWSET, None, "mine", "", "") == "rows:mine"
    assert probe_tab.spec_of(ws, probe_tab.CLUSTERING, "kmeans:4", None, "", "") == "kmeans:4"
    with pytest.raises(CedmError, match="row numbers"):
        probe_tab.parse_rows("a, b")
    with pytest.raises(CedmError, match="pick at least one"):
        probe_tab.spec_of(ws, probe_tab.PICKS, None, None, "", "x")
    with pytest.raises(CedmError, match="must lie in"):
        probe_tab.spec_of(ws, probe_tab.PICKS, None, None, "99", "x")
    info = {"labeling": "rows:mine", "n_classes": 2, "settings": {"route": "x0"},
            "report": {"seconds": 3, "n_train": 9, "n_heldout": 3, "clean": {"accuracy": 1, "balanced_accuracy": 1},
                       "sigma_bins": [{"sigma": [0.002, 0.1], "accuracy": 0.5, "balanced_accuracy": 0.5}]}}
    md = probe_tab.report_markdown(info)
    assert "| 0.002-0.1 | 0.50 | 0.50 |" in md and "rows:mine" in md
    assert probe_tab.caption({"guidance": 2.0, "probe_class_name": "mine", "seed": 4}).startswith("probe-guided w 2")
    assert probe_tab.caption({"guidance": 0.0, "seed": 4}).startswith("unguided")
    monkeypatch.setattr(wsp, "DEMO_DIR", tmp_path / "no-demo")
    build_app(tmp_path / "home2", model_dirs=[])  # the Adapt tab is part of the page (no first-batch thread)
