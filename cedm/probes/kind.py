"""The ``probe`` guidance kind: one entry of cedm.sampling.guidance.GUIDANCE (registered on import).

    Guidance(scale=w, kind="probe", interval=(lo, hi) | None,
             params=(("probe", FOLDER), ("cfg", w_cfg), ("condition", c | None)))

Each row's label carries two ids: the model's own condition (0..C, C = none) and the probe class t, as
``label = condition + (C + 1) * t`` (for an unconditional model, C = 0: label = t). ``build`` splits them: the
model's denoiser (classifier-free guidance at w_cfg toward ``condition`` for a C-EDM, else its plain
unconditional branch) is wrapped with the probe's gradient toward t (cedm.probes.guidance). Besides the four
fields every kind has, this kind has three hooks the sampling front ends use when a kind offers them:
``prepare`` (the per-image labels: probe classes fixed or drawn from the labeling's q), ``select`` (the
probe's probability of each finished row's class, for best-of) and ``describe`` (what a record says).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cedm.cache import LRU
from cedm.errors import CedmError
from cedm.sampling.guidance import GUIDANCE, Guidance, GuidanceKind, register_guidance

KIND = "probe"
_PROBES = LRU(8)  # loaded probes per (folder, mtime, model)


def probe_spec(probe_dir, w: float = 1.0, cfg: float = 1.0, condition: int | None = None,
               interval=None) -> Guidance:
    """A probe guidance request: toward the probe's classes at weight ``w``; for a C-EDM also classifier-free
    guidance at ``cfg`` toward its own ``condition`` (None: its unconditional branch)."""
    from cedm.probes.probe import read_probe_info

    folder = Path(probe_dir).expanduser()
    read_probe_info(folder)  # a clear error for a folder that is no probe
    params = (("probe", str(folder.resolve())), ("cfg", float(cfg)),
              ("condition", None if condition is None else int(condition)))
    return Guidance(w, interval, KIND, params)


def probe_for(model, probe_dir):
    """The loaded probe of ``probe_dir`` bound to ``model`` (cached per folder and model; checked once)."""
    from cedm.probes.probe import load_probe

    folder = Path(probe_dir)
    try:
        mtime = (folder / "probe.json").stat().st_mtime_ns
    except OSError:
        raise CedmError(f"{probe_dir} is not a probe folder (no probe.json)") from None
    return _PROBES.get((str(folder), mtime, id(model)), lambda: load_probe(folder, model))


def _model_of(net):
    return getattr(net, "model", net)  # the engine's FastNet wraps the CEDM


def split_labels(model, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c1 = int(model.n_conditions) + 1
    return labels % c1, labels // c1


def _check(model, g: Guidance, conditional: bool) -> None:
    probe_for(model, g.get("probe"))
    cond = g.get("condition")
    if cond is not None:
        if model.n_conditions == 0:
            raise CedmError("this model is unconditional (trained without conditions): it takes no condition "
                            "besides the probe's classes")
        if not 0 <= int(cond) < model.n_conditions:
            raise CedmError(f"condition {cond} does not exist: this model has clusters 0..{model.n_conditions - 1}")
        GUIDANCE["cfg"].check(model, Guidance(g.get("cfg", 1.0)), True)
    elif model.n_conditions > 0:
        GUIDANCE["cfg"].check(model, Guidance(0.0), False)  # the unconditional branch must exist


def _build(net, labels: torch.Tensor, g: Guidance):
    from cedm.probes.guidance import probe_guidance

    model = _model_of(net)
    probe = probe_for(model, g.get("probe"))
    cond, target = split_labels(model, labels)
    if probe.uses_denoised:
        # the gradient flows back through D: the plain eager network (the engine's fast copy of it on CPU is
        # TorchScript-frozen for inference, which autograd does not go through)
        net = model
    if g.get("condition") is not None:
        base = GUIDANCE["cfg"].build(net, cond, Guidance(g.get("cfg", 1.0)))
    else:
        def base(x, sigma):
            return net(x, sigma, cond)
    return probe_guidance(base, probe, target, g.scale, interval=g.interval)


def prepare(model, g: Guidance, n: int, targets=None, from_q: bool = True, seed: int = 0) -> list[int]:
    """Per-image labels (condition and probe class in one id); probe classes fixed, listed or drawn from q."""
    from cedm.probes.sample import probe_targets

    probe = probe_for(model, g.get("probe"))
    t = probe_targets(probe, n, targets, from_q, seed)
    cond = g.get("condition")
    c = model.uncond_index if cond is None else int(cond)
    return [c + (model.n_conditions + 1) * k for k in t]


def select(model, g: Guidance, x: torch.Tensor, labels) -> np.ndarray:
    """The probe's probability of each row's class, for finished rows x (float (N, 3, R, R) in [-1, 1])."""
    probe = probe_for(model, g.get("probe"))
    dev = next(model.parameters()).device
    _, target = split_labels(model, torch.as_tensor(np.asarray(labels), dtype=torch.long))
    p = probe.proba_images(x.to(dev))
    return p[np.arange(len(p)), target.numpy()]


def describe(model, g: Guidance, label: int) -> dict:
    probe = probe_for(model, g.get("probe"))
    cond, t = divmod(int(label), model.n_conditions + 1)[::-1]
    return {"condition": None if cond == model.uncond_index else int(cond), "probe_class": int(t),
            "probe_class_name": probe.class_names[t], "probe_labeling": probe.info.get("labeling"),
            "guided_by": "classifier-free + probe" if g.get("condition") is not None else "probe",
            "cfg": g.get("cfg") if g.get("condition") is not None else None}


@dataclass(frozen=True)
class ProbeKind(GuidanceKind):
    prepare: Callable | None = None
    select: Callable | None = None
    describe: Callable | None = None


register_guidance(ProbeKind(KIND, build=_build, check=_check, needs_grad=True, prepare=prepare, select=select,
                            describe=describe))
