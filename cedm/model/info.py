"""Typed model information: what ``cedm.json`` of a model folder says, as one dataclass.

``save_model`` writes ``ModelInfo.to_dict()``; ``read_model_info`` returns ``ModelInfo.from_dict(json)``. Keys
this version does not know are kept in ``extra`` and written back unchanged. A ModelInfo is also a read-only
mapping of its JSON form (``info.get("condition")``), so dict-style readers keep working.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MODEL_FORMAT = "cedm-model"
MODEL_FORMAT_VERSION = 1
SIGMA_DATA = 0.5


@dataclass
class ModelInfo(Mapping):
    """cedm.json. ``condition``: the labeling it was trained on (spec, q, original_ids, params, artifact,
    backbone, class_names); ``sampling``: per-model sampling defaults (``guidance_interval`` [lo, hi], chosen
    by FD, see checkpoints/README.md)."""
    n_conditions: int = 0
    resolution: int = 0
    sigma_data: float = SIGMA_DATA
    preset: str | None = None
    p_uncond: float = 0.0
    condition: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    sampling: dict = field(default_factory=dict)
    format: str = MODEL_FORMAT
    format_version: int = MODEL_FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "ModelInfo":
        if isinstance(d, ModelInfo):
            return dataclasses.replace(d)
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: d.pop(k) for k in list(d) if k in known and d[k] is not None}
        d.pop("uncond_index", None)  # derived
        for k in ("condition", "provenance", "training", "sampling"):
            kw[k] = dict(kw.get(k) or {})
        return cls(**kw, extra=d)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["uncond_index"] = self.uncond_index
        return {**self.extra, **out}

    def updated(self, other: Mapping | None = None, **kw) -> "ModelInfo":
        """A copy with the keys of ``other`` / ``kw`` replaced (JSON names)."""
        return ModelInfo.from_dict({**self.to_dict(), **dict(other or {}), **kw})

    # --- typed accessors -----------------------------------------------------------------------------
    @property
    def uncond_index(self) -> int:
        return int(self.n_conditions)

    @property
    def spec(self) -> str:
        """The condition labeling, e.g. 'kmeans:20'; 'none' for an unconditional model."""
        return str(self.condition.get("spec") or ("none" if self.n_conditions == 0 else "?"))

    @property
    def guidance_interval(self) -> tuple[float, float] | None:
        """The model's default guidance interval (None: guide at every noise level)."""
        iv = self.sampling.get("guidance_interval")
        return (float(iv[0]), float(iv[1])) if iv else None

    # --- read-only mapping of the JSON form ---------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    __hash__ = None  # mutable dataclass


def default_guidance_interval(info: Mapping) -> tuple[float, float] | None:
    """The guidance interval a request gets when it names none: the model's (cedm.json ``sampling``)."""
    return ModelInfo.from_dict(info).guidance_interval
