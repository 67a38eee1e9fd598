"""Non-leaking geometric augmentation (EDM, Karras et al. 2022, after ADA; C-EDM table 7: p = 0.12-0.15).

Each image is transformed with probability p per operation, and the network is told what was done: the
parameters of every operation form an *augmentation vector*, given to the denoiser as extra conditioning and
zero at sampling time. Because the model can tell augmented from clean training images, the augmentations do
not leak into the samples (a model asked for the zero vector generates un-augmented images).

Operations (the order and the vector layout follow NVlabs/edm ``training/augment.py``):

=================  ======  ===================================================================
operation          dims    vector entries (all 0 for an image the operation left alone)
=================  ======  ===================================================================
xflip              1       1 if mirrored left-right
yflip              1       1 if mirrored top-bottom
rotate_int         2       90-degree rotations k: [k in (1, 2), k in (2, 3)]
translate_int      2       integer shift / (size * translate_int_max), in [-1, 1]
scale              1       w, with scale factor 2 ** (w * scale_std), w ~ N(0, 1)
rotate_frac        2       [cos(a) - 1, sin(a)] for rotation a
aniso              2       [w cos(r), w sin(r)]: stretch 2 ** (w * aniso_std) along direction r
translate_frac     2       [wx, wy]: shift of w * size * translate_frac_std pixels
=================  ======  ===================================================================

``edm_pipe(p)`` is EDM's setting (``--augment P`` of its train.py): xflip (always a random flip, labelled),
yflip, scale, rotate_frac, aniso, translate_frac: a 9-dimensional vector, the paper's "augment dim 9".
The integer operations (x-flip, integer translation with reflection, 90-degree rotation) are exact pixel
permutations; the others are one affine resampling (bilinear, reflection padding). Unlike EDM we resample
at the image's own resolution instead of through a 2x wavelet-upsampled copy: slightly softer, same labels.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cedm.errors import CedmError

OPS = ("xflip", "yflip", "rotate_int", "translate_int", "scale", "rotate_frac", "aniso", "translate_frac")
DIMS = {"xflip": 1, "yflip": 1, "rotate_int": 2, "translate_int": 2, "scale": 1, "rotate_frac": 2, "aniso": 2,
        "translate_frac": 2}
EDM_OPS = {"xflip": 1e8, "yflip": 1, "scale": 1, "rotate_frac": 1, "aniso": 1, "translate_frac": 1}


@dataclass
class AugmentPipe:
    """Probability ``p`` times a multiplier per operation (0 = the operation is not part of the pipe and has
    no entries in the vector)."""
    p: float = 0.12
    xflip: float = 0.0
    yflip: float = 0.0
    rotate_int: float = 0.0
    translate_int: float = 0.0
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    translate_int_max: float = 0.125
    scale_std: float = 0.2
    rotate_frac_max: float = 1.0
    aniso_std: float = 0.2
    aniso_rotate_prob: float = 0.5
    translate_frac_std: float = 0.125

    def __post_init__(self):
        if not 0 <= self.p <= 1:
            raise CedmError(f"augmentation probability must be in [0, 1], got {self.p}")
        if any(getattr(self, op) < 0 for op in OPS):
            raise CedmError("augmentation multipliers must be >= 0")

    @property
    def ops(self) -> list[str]:
        return [op for op in OPS if getattr(self, op) > 0]

    @property
    def dim(self) -> int:
        """Length of the augmentation vector."""
        return sum(DIMS[op] for op in self.ops)

    def to_dict(self) -> dict:
        return asdict(self)

    def _apply(self, op: str, n: int, gen, device) -> torch.Tensor:
        """(N,) bool: which images get ``op``."""
        prob = min(getattr(self, op) * self.p, 1.0)
        return torch.rand(n, generator=gen, device=device) < prob

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) images -> (augmented images, (B, dim) float32 augmentation vectors)."""
        n, _, h, w = images.shape
        dev, gen = images.device, generator
        labels = []
        x = images
        if self.xflip > 0:
            f = torch.randint(2, (n,), generator=gen, device=dev) * self._apply("xflip", n, gen, dev)
            x = torch.where(f.view(-1, 1, 1, 1) == 1, x.flip(3), x)
            labels.append(f.float()[:, None])
        if self.yflip > 0:
            f = torch.randint(2, (n,), generator=gen, device=dev) * self._apply("yflip", n, gen, dev)
            x = torch.where(f.view(-1, 1, 1, 1) == 1, x.flip(2), x)
            labels.append(f.float()[:, None])
        if self.rotate_int > 0:
            if h != w:
                raise CedmError("90-degree rotations need square images")
            k = torch.randint(4, (n,), generator=gen, device=dev) * self._apply("rotate_int", n, gen, dev)
            kk = k.view(-1, 1, 1, 1)
            x = torch.where((kk == 1) | (kk == 2), x.flip(3), x)
            x = torch.where((kk == 2) | (kk == 3), x.flip(2), x)
            x = torch.where((kk == 1) | (kk == 3), x.transpose(2, 3), x)
            labels.append(torch.stack([(k == 1) | (k == 2), (k == 2) | (k == 3)], 1).float())
        if self.translate_int > 0:
            t = (torch.rand(2, n, generator=gen, device=dev) * 2 - 1) * self._apply("translate_int", n, gen, dev)
            tx = (t[0] * w * self.translate_int_max).round().long()
            ty = (t[1] * h * self.translate_int_max).round().long()
            x = _shift_reflect(x, tx, ty)
            labels.append(torch.stack([tx / (w * self.translate_int_max), ty / (h * self.translate_int_max)], 1))
        G = torch.eye(3, device=dev).repeat(n, 1, 1)  # output pixel (centre origin) -> input pixel
        moved = torch.zeros(n, dtype=torch.bool, device=dev)  # images some affine operation applies to
        if self.scale > 0:
            on = self._apply("scale", n, gen, dev)
            z = torch.randn(n, generator=gen, device=dev) * on
            s = torch.exp2(z * self.scale_std)
            G = G @ _scale(1 / s, 1 / s)
            labels.append(z[:, None])
            moved |= on
        if self.rotate_frac > 0:
            a = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * math.pi * self.rotate_frac_max
            on = self._apply("rotate_frac", n, gen, dev)
            a = a * on
            G = G @ _rotate(a)   # the inverse of rotating the image by -a
            labels.append(torch.stack([a.cos() - 1, a.sin()], 1))
            moved |= on
        if self.aniso > 0:
            on = self._apply("aniso", n, gen, dev)
            z = torch.randn(n, generator=gen, device=dev) * on
            r = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * math.pi
            r = r * (torch.rand(n, generator=gen, device=dev) < self.aniso_rotate_prob) * on
            s = torch.exp2(z * self.aniso_std)
            G = G @ _rotate(-r) @ _scale(1 / s, s) @ _rotate(r)
            labels.append(torch.stack([z * r.cos(), z * r.sin()], 1))
            moved |= on
        if self.translate_frac > 0:
            on = self._apply("translate_frac", n, gen, dev)
            t = torch.randn(2, n, generator=gen, device=dev) * on
            G = G @ _translate(-t[0] * w * self.translate_frac_std, -t[1] * h * self.translate_frac_std)
            labels.append(torch.stack([t[0], t[1]], 1))
            moved |= on
        if moved.any():  # resample only the images an affine operation applies to: the others stay bit-exact
            x = x.clone()
            x[moved] = warp(x[moved], G[moved])
        vec = torch.cat(labels, 1).float() if labels else torch.zeros(n, 0, device=dev)
        return x, vec


def edm_pipe(p: float) -> AugmentPipe:
    """EDM's augmentation (its ``--augment P``): 9-dimensional vector."""
    return AugmentPipe(p=float(p), **EDM_OPS)


def _eye(n_like: torch.Tensor) -> torch.Tensor:
    return torch.eye(3, device=n_like.device, dtype=torch.float32).repeat(len(n_like), 1, 1)


def _scale(sx, sy):
    m = _eye(sx)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate(a):
    m = _eye(a)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return m


def _translate(tx, ty):
    m = _eye(tx)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _shift_reflect(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Shift each image by integer pixels, mirrored at the borders: output (x, y) takes input (x - tx, y + ty),
    as EDM's translate_int does."""
    n, c, h, w = x.shape
    xs = torch.arange(w, device=x.device)[None, :] - tx[:, None]          # (N, W) source columns
    ys = torch.arange(h, device=x.device)[None, :] + ty[:, None]          # (N, H) source rows
    xs = (w - 1) - ((w - 1) - xs % (2 * w - 2)).abs() if w > 1 else xs * 0
    ys = (h - 1) - ((h - 1) - ys % (2 * h - 2)).abs() if h > 1 else ys * 0
    idx_y = ys[:, None, :, None].expand(n, c, h, w)
    x = x.gather(2, idx_y)
    idx_x = xs[:, None, None, :].expand(n, c, h, w)
    return x.gather(3, idx_x)


def warp(x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Resample images: output pixel p (coordinates with the image centre as origin) takes input G @ p
    (bilinear, reflection at the borders)."""
    n, _, h, w = x.shape
    S = torch.diag(torch.tensor([2.0 / w, 2.0 / h, 1.0], device=x.device))
    S_inv = torch.diag(torch.tensor([w / 2.0, h / 2.0, 1.0], device=x.device))
    theta = (S @ G.to(torch.float32) @ S_inv)[:, :2, :]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False).to(x.dtype)
