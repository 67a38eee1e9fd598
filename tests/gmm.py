"""The exact denoiser of an isotropic Gaussian mixture, shaped like a C-EDM model (for sampler tests).

Cluster k: x0 ~ N(mu_k, s_k^2 I) with prior pi_k. Noised by sigma: x ~ N(mu_k, (s_k^2 + sigma^2) I), so
    conditional  D_k(x; sigma) = E[x0 | x, k] = mu_k + s_k^2 / (s_k^2 + sigma^2) (x - mu_k)
    unconditional D(x; sigma)  = sum_k r_k(x) D_k(x),  r_k(x) = p(k | x) proportional to pi_k N(x; mu_k, (s_k^2 + sigma^2) I)
"""
from __future__ import annotations

import torch


class GaussianMixtureDenoiser:
    def __init__(self, means, stds, weights, p_uncond: float = 0.1):
        self.means = torch.as_tensor(means, dtype=torch.float64)  # (K, *shape)
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.n_conditions = len(self.means)
        self.uncond_index = self.n_conditions
        self.info = {"p_uncond": p_uncond, "condition": {"q": self.weights.tolist()}}
        self.calls: list[tuple[int, float]] = []  # (batch size, sigma) of every call

    def _flat(self, x):
        return x.reshape(x.shape[0], -1)

    def conditional(self, x, sigma, k):
        mu, s2 = self.means[k].reshape(x.shape), self.stds[k].reshape(-1, *[1] * (x.dim() - 1)) ** 2
        return mu + s2 / (s2 + sigma ** 2) * (x - mu)

    def unconditional(self, x, sigma):
        xf, mu = self._flat(x), self._flat(self.means)
        var = self.stds ** 2 + sigma ** 2  # (K,)
        d = xf.shape[1]
        sq = ((xf[:, None, :] - mu[None]) ** 2).sum(-1)  # (B, K)
        logr = self.weights.log() - 0.5 * d * var.log() - sq / (2 * var)
        r = torch.softmax(logr, dim=1)  # (B, K)
        shrink = (self.stds ** 2 / var)  # (K,)
        dk = mu[None] + shrink[None, :, None] * (xf[:, None, :] - mu[None])  # (B, K, d)
        return (r[:, :, None] * dk).sum(1).reshape(x.shape)

    def __call__(self, x, sigma, class_labels=None):
        x = x.to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        self.calls.append((x.shape[0], float(sigma)))
        if class_labels is None:
            class_labels = torch.full((x.shape[0],), self.uncond_index)
        out = self.unconditional(x, sigma)
        cond = class_labels != self.uncond_index
        if cond.any():
            out[cond] = self.conditional(x[cond], sigma, class_labels[cond])
        return out

    def sample_data(self, n, generator):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        shape = self.means.shape[1:]
        eps = torch.randn((n, *shape), generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k].reshape(-1, *[1] * len(shape)) * eps, k
