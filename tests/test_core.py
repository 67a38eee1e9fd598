"""The sampling core seen from the front ends: `cedm sample` / `cedm eval` never write into the model folder,
and a model's default guidance interval (cedm.json ``sampling``) is what a request without one gets."""
import json

import numpy as np
import pytest
import torch

from cedm.model.edm import CEDM, load_model, read_model_info, save_model
from cedm.model.info import ModelInfo


def _model(tmp_path, interval=None):
    torch.manual_seed(0)
    m = CEDM.from_preset("tiny", 8, 2, info={"p_uncond": 0.1, "condition": {"q": [0.5, 0.5]},
                                             "sampling": {"guidance_interval": interval} if interval else {}})
    return save_model(tmp_path / "models" / "tiny", m)


def test_cli_sample_writes_under_the_home_not_the_model(tmp_path):
    from cedm.cli import main
    from cedm.evaluate import default_eval_dir

    mdir = _model(tmp_path)
    before = sorted(p.name for p in mdir.rglob("*"))
    home = tmp_path / "home"
    assert main(["sample", str(mdir), "--n", "2", "--steps", "2", "--sampler", "euler", "--guidance", "2",
                 "--guidance-interval", "0.5,5", "--home", str(home), "--dtype", "fp32"]) == 0
    assert sorted(p.name for p in mdir.rglob("*")) == before  # the model folder is untouched
    [jsonl] = list((home / "samples" / "tiny").rglob("samples.jsonl"))
    rec = json.loads(jsonl.read_text().splitlines()[0])
    assert rec["guidance"] == 2.0 and rec["guidance_interval"] == [0.5, 5.0]
    assert default_eval_dir(mdir, home) == home / "eval" / "tiny"


def test_model_info_round_trip_and_default_interval(tmp_path):
    from cedm.inference import reference_sample
    from cedm.sampling.generate import generate

    mdir = _model(tmp_path, interval=[0.5, 5.0])
    info = read_model_info(mdir)
    assert isinstance(info, ModelInfo) and info.guidance_interval == (0.5, 5.0) and info.n_conditions == 2
    assert info["uncond_index"] == 2 and info.get("condition")["q"] == [0.5, 0.5] and info.spec == "?"
    assert ModelInfo.from_dict(json.loads((mdir / "cedm.json").read_text())).to_dict() == info.to_dict()
    m = load_model(mdir)
    kw = dict(n=2, clusters=[0, 1], guidance=3.0, steps=4, sampler="dpmpp2m", seed=1)
    ims, recs = generate(m, **kw)  # no interval given: the model's default
    assert recs[0]["guidance_interval"] == [0.5, 5.0]
    same, _ = generate(m, guidance_interval=(0.5, 5.0), **kw)
    full, frec = generate(m, guidance_interval="full", **kw)
    assert np.array_equal(ims, same) and "guidance_interval" not in frec[0]
    ref = reference_sample(m, guidance_interval="full", **kw)
    assert np.abs(full.astype(int) - ((ref + 1) * 127.5).round().clamp(0, 255).permute(0, 2, 3, 1).numpy()).max() <= 1


def test_assigner_and_condition_map():
    import pytest

    from cedm.clusters.assign import Assigner, condition_map
    from cedm.errors import CedmError

    cents = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    feats = np.array([[3.0, 0.1, 0], [0, 0, 0.5]])
    for method in ("kmeans", "skmeans"):
        p = Assigner(method, centroids=cents).proba(feats)
        assert p.shape == (2, 3) and np.allclose(p.sum(1), 1, atol=1e-6) and list(p.argmax(1)) == [0, 2]
        # softmax of cosine / 0.1: e^10 between a perfect match and an orthogonal centroid
        assert np.isclose(p[1, 2] / p[1, 0], np.exp(10), rtol=1e-3)
    assert list(condition_map([2, 0], 4)) == [1, -1, 0, -1]
    with pytest.raises(CedmError, match="do not fit"):
        condition_map([5], 3)
    with pytest.raises(CedmError, match="no stored centroids"):
        Assigner("kmeans")
    with pytest.raises(CedmError, match="no stored head"):
        Assigner("temi")


def test_lru_cache_keeps_the_most_recent_and_makes_once():
    from cedm.cache import LRU

    made = []

    def maker(k):
        return lambda: made.append(k) or f"v{k}"

    c = LRU(2)
    assert c.get(1, maker(1)) == "v1" and c.get(2, maker(2)) == "v2" and c.get(1, maker(1)) == "v1"
    assert made == [1, 2]                  # a hit does not make again
    c.get(3, maker(3))                     # 2 was the least recently used
    assert c.keys() == [1, 3] and 2 not in c and len(c) == 2
    assert c.get(2, maker(2)) == "v2" and made == [1, 2, 3, 2]
    with pytest.raises(ValueError):
        LRU(0)
