"""C-EDM model, training and generation: preconditioning, save/load, exact resume, DDP, seeds, learning."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cedm.errors import CedmError
from cedm.model.edm import CEDM, count_parameters, load_model, save_model, unet_config
from cedm.model.train import TrainConfig, list_checkpoints, load_batch, param_digest, train, train_workspace
from cedm.sampling.generate import generate, save_samples
from tests.gmm import GaussianMixtureDenoiser

REPO = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_thread")  # the shared 2-core machine runs faster on one thread


def blobs(n, seed=0):
    """16x16 images of two visually distinct groups: a red disc (label 0) or a blue disc (label 1) on grey."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]
    images = np.full((n, 16, 16, 3), 220, np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        cy, cx = rng.uniform(5, 11, 2)
        r = rng.uniform(3, 5)
        images[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = [210, 40, 40] if labels[i] == 0 else [40, 40, 210]
    return images, labels


def tiny_cfg(**kw):
    base = dict(preset="tiny", kimg=0.096, batch=16, sample_kimg=0, checkpoint_kimg=1000, log_every=2)
    return TrainConfig(**{**base, **kw})


# --- model --------------------------------------------------------------------------------------
def test_presets():
    n = count_parameters(CEDM.from_preset("paper", 32, 10))
    assert 50e6 < n < 62e6  # DDPM++ CIFAR is 55.7M
    cfg = unet_config("small", 64, 3)
    assert cfg["num_class_embeds"] == 4 and len(cfg["block_out_channels"]) == 4  # 64 -> 8x8 in 4 levels
    assert cfg["down_block_types"][-1] == "AttnDownBlock2D"
    with pytest.raises(CedmError, match="resolution"):
        unet_config("small", 24, 3)
    with pytest.raises(CedmError, match="unknown preset"):
        unet_config("huge", 32, 3)


def test_preconditioning():
    """D = c_skip x + c_out F(c_in x; ln(sigma)/4): with F = 0, D = c_skip x; the UNet sees c_in x and c_noise."""
    m = CEDM.from_preset("tiny", 16, 2).eval()
    seen = {}
    m.unet.register_forward_pre_hook(lambda mod, a, kw: seen.update(x=a[0], t=a[1], c=kw["class_labels"]),
                                     with_kwargs=True)
    torch.nn.init.zeros_(m.unet.conv_out.weight)
    torch.nn.init.zeros_(m.unet.conv_out.bias)
    x = torch.randn(3, 3, 16, 16)
    sigma = torch.tensor([0.1, 1.0, 20.0])
    with torch.no_grad():
        d = m(x, sigma, torch.tensor([0, 1, 2]))
    s = sigma.reshape(-1, 1, 1, 1)
    assert torch.allclose(d, 0.25 / (s ** 2 + 0.25) * x, atol=1e-6)
    assert torch.allclose(seen["x"], x / (s ** 2 + 0.25).sqrt(), atol=1e-6)
    assert torch.allclose(seen["t"], sigma.log() / 4)
    with torch.no_grad():
        m(x, 2.0)  # no labels: the "no condition" index C
    assert seen["c"].tolist() == [2, 2, 2]


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = CEDM.from_preset("tiny", 16, 3, info={"p_uncond": 0.2, "condition": {"q": [0.2, 0.3, 0.5]}}).eval()
    raw = CEDM.from_preset("tiny", 16, 3).eval()
    save_model(tmp_path / "m", m, raw)
    info = json.loads((tmp_path / "m" / "cedm.json").read_text())
    assert info["n_conditions"] == 3 and info["resolution"] == 16 and info["sigma_data"] == 0.5
    assert (tmp_path / "m" / "unet_ema" / "diffusion_pytorch_model.safetensors").is_file()
    x, sigma, c = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 3.0]), torch.tensor([1, 3])
    for ema, ref in ((True, m), (False, raw)):
        back = load_model(tmp_path / "m", ema=ema)
        with torch.no_grad():
            assert torch.equal(back(x, sigma, c), ref(x, sigma, c))
    assert back.info["condition"]["q"] == [0.2, 0.3, 0.5]
    with pytest.raises(CedmError, match="not a cedm model"):
        load_model(tmp_path)


# --- training -----------------------------------------------------------------------------------
def test_load_batch_flips_and_resizes():
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[:, :, :16] = 255  # left half white
    x = load_batch(images, np.array([1, 0]), np.array([False, True]), 16, torch.device("cpu"))
    assert x.shape == (2, 3, 16, 16) and x.min() == -1 and x.max() == 1
    assert (x[0, :, :, :8] == 1).all() and (x[1, :, :, 8:] == 1).all()  # image 1 flipped: white on the right


def test_bad_training_input(tmp_path):
    images, labels = blobs(8)
    with pytest.raises(CedmError, match="uint8"):
        train(images.astype(np.float32), labels, 2, tmp_path / "a", tiny_cfg())
    with pytest.raises(CedmError, match="labels must lie"):
        train(images, labels + 1, 2, tmp_path / "a", tiny_cfg())
    with pytest.raises(CedmError, match="p_uncond"):
        train(images, labels, 2, tmp_path / "a", tiny_cfg(p_uncond=1.0))
    with pytest.raises(CedmError, match="precision bf16 needs a CUDA"):
        train(images, labels, 2, tmp_path / "a", tiny_cfg(precision="bf16"), device="cpu")
    assert not (tmp_path / "a").exists()


def test_exact_resume(tmp_path):
    """Stopped after 3 steps and resumed = uninterrupted 6 steps, bit for bit (weights, EMA, optimizer)."""
    images, labels = blobs(24)
    labels[::5] = -1  # some images without a condition
    cfg = tiny_cfg(dropout=0.2, checkpoint_kimg=0.032)
    train(images, labels, 2, tmp_path / "full", cfg, show_progress=False)
    train(images, labels, 2, tmp_path / "split", cfg, max_steps=3, show_progress=False)
    part = json.loads((tmp_path / "split" / "cedm.json").read_text())["training"]
    assert part["steps"] == 3 and not part["complete"]
    with pytest.raises(CedmError, match="already holds a model"):
        train(images, labels, 2, tmp_path / "split", cfg, show_progress=False)
    with pytest.raises(CedmError, match="batch"):
        train(images, labels, 2, tmp_path / "split", tiny_cfg(batch=8), resume=True, show_progress=False)
    train(images, labels, 2, tmp_path / "split", cfg, resume=True, show_progress=False)
    a = load_file(str(list_checkpoints(tmp_path / "full" / "training")[-1].with_suffix(".safetensors")))
    b = load_file(str(list_checkpoints(tmp_path / "split" / "training")[-1].with_suffix(".safetensors")))
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for sub in ("unet", "unet_ema"):
        fa = (tmp_path / "full" / sub / "diffusion_pytorch_model.safetensors").read_bytes()
        assert fa == (tmp_path / "split" / sub / "diffusion_pytorch_model.safetensors").read_bytes()
    info = json.loads((tmp_path / "split" / "cedm.json").read_text())
    assert info["training"]["complete"] and info["training"]["steps"] == 6
    # a Stop request (should_stop) between checkpoints leaves a checkpoint at that step; resuming finishes the same
    asked = []
    train(images, labels, 2, tmp_path / "stopped", cfg, show_progress=False,
          should_stop=lambda: asked.append(1) or len(asked) >= 3)  # step 3: between checkpoints
    part = json.loads((tmp_path / "stopped" / "cedm.json").read_text())["training"]
    assert part["steps"] == 3 and not part["complete"]
    train(images, labels, 2, tmp_path / "stopped", cfg, resume=True, show_progress=False)
    c = load_file(str(list_checkpoints(tmp_path / "stopped" / "training")[-1].with_suffix(".safetensors")))
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert not list((tmp_path / "full" / "training").glob("samples-*.png"))  # sample_kimg = 0: never
    # a different seed gives different weights (the comparison above can fail)
    train(images, labels, 2, tmp_path / "seed1", tiny_cfg(dropout=0.2, seed=1), show_progress=False)
    assert param_digest(load_model(tmp_path / "seed1")) != param_digest(load_model(tmp_path / "full"))


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(REPO / "tests" / "ddp_train.py"), str(out)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = list_checkpoints(out / "training")
    assert ckpts
    for c in ckpts:  # every rank hashed its own replica at each checkpoint
        meta = json.loads(c.read_text())
        assert meta["world_size"] == 2 and len(meta["rank_param_digests"]) == 2
        assert meta["rank_param_digests"][0] == meta["rank_param_digests"][1]
    assert meta["step"] == 6
    assert meta["rank_param_digests"][0] == param_digest(load_model(out, ema=False))
    assert json.loads((out / "cedm.json").read_text())["training"]["world_size"] == 2


def test_learning_two_colour_groups(tmp_path):
    """A minute of CPU training on red vs blue discs: the loss falls and each condition gets its colour."""
    images, labels = blobs(256)
    cfg = TrainConfig(preset="tiny", kimg=4, batch=32, lr=2e-3, ema_halflife_kimg=0.5, sample_kimg=0,
                      checkpoint_kimg=1000, log_every=25)
    out = train(images, labels, 2, tmp_path / "m", cfg, show_progress=False)
    losses = [json.loads(line)["loss"] for line in (out / "training" / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0]
    model = load_model(out)
    for k in (0, 1):
        want = images[labels == k].reshape(-1, 3).mean(0)
        got = generate(model, 16, clusters=k, steps=12, sampler="dpmpp2m", seed=0)[0].reshape(-1, 3).mean(0)
        assert np.abs(got - want).max() < 12, (k, got, want)
        red_minus_blue = got[0] - got[2]
        assert red_minus_blue > 20 if k == 0 else red_minus_blue < -20


def test_train_workspace_with_a_labeling(home):
    from cedm.clusters.labelings import save_labeling
    from cedm.workspace import create_from_array

    images, labels = blobs(16)
    ws = create_from_array(home, "blobs", images)
    save_labeling(ws, "colour", labels, ["red", "blue"])
    out = train_workspace(ws, "labels:colour", preset="tiny", kimg=0.032, batch=16, sample_kimg=0,
                          show_progress=False)
    assert out == ws.derived_dir("models") / "labels-colour-tiny"
    info = json.loads((out / "cedm.json").read_text())
    q = np.bincount(labels, minlength=2) / len(labels)
    assert info["condition"]["spec"] == "labels:colour"
    np.testing.assert_allclose(info["condition"]["q"], q)
    assert info["condition"]["class_names"] == ["red", "blue"] and info["provenance"]["workspace"] == "blobs"
    out = train_workspace(ws, "none", preset="tiny", kimg=0.016, batch=16, sample_kimg=None, show_progress=False)
    assert load_model(out).n_conditions == 0
    assert [p.name for p in (out / "training").glob("samples-*.png")] == ["samples-000000001.png"]  # at the end


def test_init_from_an_unconditional_model_carries_its_weights(tmp_path):
    """--init: a C-EDM made from an unconditional model keeps every weight; each condition starts as its
    "no condition" embedding, so before any step it denoises exactly like the unconditional model."""
    import torch

    from cedm.model.edm import save_model
    from cedm.model.train import init_weights

    torch.manual_seed(1)
    src = CEDM.from_preset("tiny", 16, 0)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))  # not a fresh init: carried weights are recognisable
    save_model(tmp_path / "uncond", src)
    torch.manual_seed(2)
    net = CEDM.from_preset("tiny", 16, 3)
    found = init_weights(net, tmp_path / "uncond")
    assert found["class_rows"] == "uncond"
    theirs, ours = src.unet.state_dict(), net.unet.state_dict()
    for k, v in theirs.items():
        if k != "class_embedding.weight":
            assert torch.equal(ours[k], v), k
    emb = ours["class_embedding.weight"]
    assert emb.shape[0] == 4 and all(torch.equal(emb[i], theirs["class_embedding.weight"][0]) for i in range(4))
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 1.0])
    with torch.no_grad():
        want = src.eval()(x, sigma, None)
        got = net.eval()(x, sigma, torch.tensor([0, 2]))
    torch.testing.assert_close(got, want)
    # a different architecture is refused with the reason
    with pytest.raises(CedmError, match="preset"):
        init_weights(CEDM.from_preset("tiny", 32, 3), tmp_path / "uncond")
    # training with init=: the first weights are the carried ones, and the model records where it came from
    images, labels = blobs(16)
    out = train(images, labels % 3, 3, tmp_path / "ft", TrainConfig(preset="tiny", kimg=0.016, batch=16,
                sample_kimg=0, init=str(tmp_path / "uncond"), lr=1e-9, lr_rampup_kimg=0), show_progress=False)
    assert json.loads((out / "cedm.json").read_text())["provenance"]["init"] == str(tmp_path / "uncond")
    got = load_model(out, ema=False).unet.state_dict()
    assert torch.allclose(got["conv_in.weight"], theirs["conv_in.weight"], atol=1e-6)


def test_measured_training_speed_is_positive_and_remembered():
    from cedm.model import train as tr

    ips = tr.measure_images_per_s("tiny", 16, batch=4, steps=1, device="cpu")
    assert ips > 0 and tr.measure_images_per_s("tiny", 16, batch=4, steps=1, device="cpu") == ips


# --- generation ---------------------------------------------------------------------------------
class _Recorder:
    """Wraps a model and keeps the input of its first call (= sigma_max x the initial noise)."""

    def __init__(self, model):
        self.model, self.first = model, None
        self.n_conditions, self.uncond_index, self.info = model.n_conditions, model.uncond_index, model.info
        self.resolution = 8

    def __call__(self, x, sigma, labels=None):
        if self.first is None:
            self.first = x.clone()
        return self.model(x, sigma, labels)


def _image_gmm(p_uncond=0.1):
    means = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.3
    g = GaussianMixtureDenoiser(means, [0.2, 0.3, 0.2], [0.2, 0.3, 0.5], p_uncond=p_uncond)
    g.resolution = 8
    return g


def test_same_seed_same_noise_across_clusters_guidance_and_batches():
    g = _image_gmm()
    firsts = []
    for clusters, w in ((0, 1.0), (2, 1.0), (1, 3.0)):
        r = _Recorder(g)
        generate(r, 4, clusters=clusters, guidance=w, steps=3, seed=10, batch_size=4)
        firsts.append(r.first[:4].float())  # guided calls stack [cond; uncond]: take the first half
    assert torch.equal(firsts[0], firsts[1]) and torch.equal(firsts[0], firsts[2])
    a, rec_a = generate(g, 4, clusters=[0, 1, 2, 0], steps=4, sampler="heun", seed=10, batch_size=3)
    b, rec_b = generate(g, 2, clusters=[2, 0], steps=4, sampler="heun", seed=12, batch_size=1)
    assert np.array_equal(a[2:], b) and rec_a[2]["seed"] == rec_b[0]["seed"] == 12
    # conditions drawn from q(c) depend on the image's seed only, and follow q(c)
    _, rec = generate(g, 400, steps=1, sampler="euler", seed=0, batch_size=400)
    _, rec2 = generate(g, 3, steps=1, sampler="euler", seed=5)
    assert [r["condition"] for r in rec[5:8]] == [r["condition"] for r in rec2]
    freq = np.bincount([r["condition"] for r in rec], minlength=3) / 400
    assert np.abs(freq - [0.2, 0.3, 0.5]).max() < 0.07


def test_generate_checks_and_saves(tmp_path):
    g = _image_gmm(p_uncond=0.0)
    images, records = generate(g, 3, clusters=1, steps=2, seed=7)  # w = 1 needs no unconditional branch
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert records[0] == {"index": 0, "seed": 7, "condition": 1, "guidance": 1.0, "steps": 2, "sampler": "heun",
                          "evaluations": 3}
    with pytest.raises(CedmError, match="p_uncond = 0"):
        generate(g, 3, clusters=1, guidance=2.0, steps=2)
    with pytest.raises(CedmError, match="p_uncond = 0"):
        generate(g, 3, uncond=True, steps=2)
    with pytest.raises(CedmError, match="cluster 3 does not exist"):
        generate(g, 2, clusters=3)
    with pytest.raises(CedmError, match="one per image"):
        generate(g, 3, clusters=[0, 1])
    out = save_samples(images, records, tmp_path / "s")
    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["file"] for r in lines] == ["00000.png", "00001.png", "00002.png"] and (out / "grid.png").is_file()


def test_cli_train_and_sample(home, capsys):
    from cedm.cli import main
    from cedm.workspace import create_from_array

    images, _ = blobs(16)
    create_from_array(home, "blobs", images)
    assert main(["train", "blobs", "--preset", "tiny", "--kimg", "0.032", "--batch", "16", "--sample-kimg", "0",
                 "--out", "u"]) == 0
    model = home / "workspaces" / "blobs" / "models" / "u"
    assert main(["sample", str(model), "--n", "2", "--steps", "2", "--sampler", "euler", "--out",
                 str(home / "s")]) == 0
    assert len(list((home / "s").glob("0*.png"))) == 2
    assert main(["sample", str(model), "--cluster", "1", "--steps", "2"]) == 2
    assert "unconditional" in capsys.readouterr().err
