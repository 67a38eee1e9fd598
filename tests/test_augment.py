"""EDM's non-leaking augmentation: the vector describes the transform, p = 0 is the identity, the network's
augmentation conditioning is inert at zero, saved and loaded with the model, resumed exactly."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cedm.errors import CedmError
from cedm.model.augment import AugmentPipe, _rotate, _scale, _translate, edm_pipe, warp
from cedm.model.edm import CEDM, load_model, save_model


pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_images(n=6, size=32, seed=0):
    """Low-frequency colour images (resampling them is nearly exact), asymmetric so flips are visible."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    a = torch.rand(n, 3, 4, generator=g)
    return torch.tanh(a[..., 0, None, None] * xx + a[..., 1, None, None] * yy
                      + a[..., 2, None, None] * xx * yy + a[..., 3, None, None] * xx ** 2)


def test_edm_pipe_is_9_dimensional_and_identity_at_p0():
    pipe = edm_pipe(0.12)
    assert pipe.dim == 9 and pipe.ops == ["xflip", "yflip", "scale", "rotate_frac", "aniso", "translate_frac"]
    x = smooth_images()
    y, vec = edm_pipe(0.0)(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, x) and vec.shape == (6, 9) and not vec.any()
    full = AugmentPipe(p=0.0, **{op: 1.0 for op in ("xflip", "yflip", "rotate_int", "translate_int", "scale",
                                                     "rotate_frac", "aniso", "translate_frac")})
    y, vec = full(x)
    assert torch.equal(y, x) and vec.shape == (6, full.dim) and full.dim == 13 and not vec.any()
    with pytest.raises(CedmError, match="probability"):
        AugmentPipe(p=1.5)


def test_integer_ops_follow_their_vector_exactly():
    x = smooth_images(32, 16)
    g = torch.Generator().manual_seed(1)
    y, v = AugmentPipe(p=1.0, xflip=1, yflip=1, rotate_int=1)(x, generator=g)
    assert v.shape == (32, 4) and 0 < v[:, 0].sum() < 32  # flips are random halves even at p = 1
    for i in range(32):  # undo in reverse order using only the vector
        z = y[i]
        a, b = bool(v[i, 2]), bool(v[i, 3])
        k = {(False, False): 0, (True, False): 1, (True, True): 2, (False, True): 3}[(a, b)]
        if k in (1, 3):
            z = z.transpose(1, 2)
        if k in (2, 3):
            z = z.flip(1)
        if k in (1, 2):
            z = z.flip(2)
        if v[i, 1]:
            z = z.flip(1)
        if v[i, 0]:
            z = z.flip(2)
        assert torch.equal(z, x[i])
    # integer translation: content moves by the vector times size * max, mirrored at the borders
    y, v = AugmentPipe(p=1.0, translate_int=1, translate_int_max=0.25)(x, generator=g)
    for i in range(32):
        tx, ty = (v[i] * 16 * 0.25).round().long().tolist()
        cols = [(c - tx) for c in range(16)]
        rows = [(r + ty) for r in range(16)]
        mirror = lambda j: 15 - abs(15 - j % 30)  # noqa: E731
        ref = x[i][:, [mirror(r) for r in rows]][:, :, [mirror(c) for c in cols]]
        assert torch.equal(y[i], ref)


def test_affine_ops_are_undone_by_the_transform_their_vector_describes():
    x = smooth_images(8, 48)
    pipe = AugmentPipe(p=1.0, scale=1, rotate_frac=1, aniso=1, translate_frac=1, aniso_rotate_prob=1.0,
                       rotate_frac_max=0.25, translate_frac_std=0.05)
    y, v = pipe(x, generator=torch.Generator().manual_seed(3))
    assert v.shape == (8, 7) and (v[:, 0] != 0).all()  # p = 1: every image transformed
    h, w = 48, 48
    s = torch.exp2(v[:, 0] * pipe.scale_std)
    a = torch.atan2(v[:, 2], v[:, 1] + 1)
    r = torch.atan2(v[:, 4], v[:, 3])
    z = torch.sqrt(v[:, 3] ** 2 + v[:, 4] ** 2) * torch.sign(v[:, 3] * r.cos() + v[:, 4] * r.sin())
    sa = torch.exp2(z * pipe.aniso_std)
    G = (_scale(1 / s, 1 / s) @ _rotate(a) @ _rotate(-r) @ _scale(1 / sa, sa) @ _rotate(r)
         @ _translate(-v[:, 5] * w * pipe.translate_frac_std, -v[:, 6] * h * pipe.translate_frac_std))
    back = warp(y, torch.linalg.inv(G))  # the forward map undoes the inverse sampling
    c = slice(16, 32)  # the centre, away from reflected borders
    err = (back[..., c, c] - x[..., c, c]).abs().mean().item()
    wrong = (warp(y, G)[..., c, c] - x[..., c, c]).abs().mean().item()
    assert err < 0.05 and wrong > 4 * err


def test_model_augment_conditioning_is_inert_at_zero_and_round_trips(tmp_path):
    torch.manual_seed(0)
    m = CEDM.from_preset("tiny", 16, 3, augment_dim=9).eval()
    torch.nn.init.normal_(m.map_augment.weight)
    x, sigma, lab = torch.randn(4, 3, 16, 16), torch.full((4,), 0.7), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        plain = m(x, sigma, lab)
        assert torch.equal(m(x, sigma, lab, torch.zeros(4, 9)), plain)  # zero vector = sampling
        aug = m(x, sigma, lab, torch.randn(4, 9))
        assert not torch.allclose(aug, plain)
        assert torch.equal(m(x, sigma, lab), plain)  # nothing left pending after a call
        with pytest.raises(CedmError, match="shape"):
            m(x, sigma, lab, torch.zeros(4, 5))
    save_model(tmp_path / "m", m)
    assert json.loads((tmp_path / "m" / "cedm.json").read_text())["augment_dim"] == 9
    back = load_model(tmp_path / "m")
    assert back.augment_dim == 9 and torch.equal(back.map_augment.weight, m.map_augment.weight)
    with torch.no_grad():
        v = torch.randn(4, 9)
        assert torch.allclose(back(x, sigma, lab, v), m(x, sigma, lab, v), atol=1e-6)
    # a model saved without augmentation (as every model before it) loads with none
    old = CEDM.from_preset("tiny", 16, 3)
    save_model(tmp_path / "old", old)
    assert "augment_dim" not in json.loads((tmp_path / "old" / "cedm.json").read_text())
    assert load_model(tmp_path / "old").map_augment is None


def test_training_with_augment_saves_the_map_and_resumes_exactly(tmp_path):
    from cedm.model.train import TrainConfig, list_checkpoints, train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(24) % 2
    cfg = TrainConfig(preset="tiny", kimg=0.096, batch=16, sample_kimg=0, checkpoint_kimg=0.032, log_every=2,
                      augment=0.5)
    train(images, labels, 2, tmp_path / "full", cfg, show_progress=False)
    train(images, labels, 2, tmp_path / "split", cfg, max_steps=3, show_progress=False)
    with pytest.raises(CedmError, match="augment"):
        train(images, labels, 2, tmp_path / "split", TrainConfig(**{**cfg.to_dict(), "augment": 0.0}),
              resume=True, show_progress=False)
    train(images, labels, 2, tmp_path / "split", cfg, resume=True, show_progress=False)
    a = load_file(str(list_checkpoints(tmp_path / "full" / "training")[-1].with_suffix(".safetensors")))
    b = load_file(str(list_checkpoints(tmp_path / "split" / "training")[-1].with_suffix(".safetensors")))
    assert "net.map_augment.weight" in a and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    m = load_model(tmp_path / "full")
    assert m.augment_dim == 9 and m.map_augment.weight.abs().sum() > 0


def test_resolution_aware_defaults_follow_the_official_configs():
    from cedm.model.edm import default_sampler_steps, unet_config

    assert unet_config("paper", 32, 10)["dropout"] == 0.13   # CIFAR-10/100
    assert unet_config("paper", 64, 10)["dropout"] == 0.05   # FFHQ-64 / AFHQ-64
    assert unet_config("paper", 64, 10, dropout=0.2)["dropout"] == 0.2
    assert (default_sampler_steps(32), default_sampler_steps(64)) == (18, 40)


def test_sample_and_eval_take_the_models_official_step_count_unless_given(tmp_path):
    """`cedm sample` / `cedm eval` without --steps: 18 for a 32 px model, 40 for a 64 px one; --steps wins."""
    import json
    import shutil

    from cedm.model.edm import steps_for
    from cedm.workspace import REPO_ROOT

    shipped = REPO_ROOT / "checkpoints" / "demo-uncond"
    assert steps_for(shipped) == 18 and steps_for(shipped, 7) == 7
    big = tmp_path / "m64"
    big.mkdir()
    info = json.loads((shipped / "cedm.json").read_text())
    (big / "cedm.json").write_text(json.dumps({**info, "resolution": 64}))
    shutil.copytree(shipped / "unet_ema", big / "unet_ema")
    assert steps_for(big) == 40
