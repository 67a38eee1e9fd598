"""Sinkhorn-Knopp: equal partition, the known assignment recovered, bad input."""
import pytest
import torch

from cedm.clusters.sinkhorn import sinkhorn


def test_equal_partition_even_when_every_sample_prefers_one_prototype():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(300, 6, generator=g) * 0.1
    scores[:, 0] += 0.3  # a collapsed head: the arg-max of every row is prototype 0
    assert (scores.argmax(1) == 0).float().mean() > 0.9
    q = sinkhorn(scores, eps=0.05, iters=10)
    torch.testing.assert_close(q.sum(1), torch.ones(300))
    mass = q.sum(0)
    assert torch.allclose(mass, torch.full((6,), 50.0), rtol=0.05)  # B / K each
    counts = torch.bincount(q.argmax(1), minlength=6)
    assert counts.min() >= 25  # hard assignments spread over all prototypes


def test_known_assignment_recovered():
    g = torch.Generator().manual_seed(1)
    truth = torch.arange(240) % 4
    protos = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=1)
    z = torch.nn.functional.normalize(protos[truth] + 0.2 * torch.randn(240, 16, generator=g), dim=1)
    q = sinkhorn(z @ protos.T)  # SwAV's settings: eps 0.05, 3 iterations
    assert (q.argmax(1) == truth).float().mean() > 0.97
    assert torch.allclose(q.sum(0), torch.full((4,), 60.0), rtol=0.1)


def test_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        sinkhorn(torch.zeros(3))
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(torch.zeros(3, 2), eps=0)
