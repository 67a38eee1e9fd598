"""Which trained models there are: the shipped ones (``<repo>/checkpoints/*/cedm.json``) and the ones trained
in a workspace (``<workspace>/models/*``, or the demo's overlay). Models are named, never opened by a path a
visitor typed: the app resolves a name against this list."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cedm.errors import CedmError
from cedm.model.edm import read_model_info
from cedm.workspace import REPO_ROOT

SHIPPED_DIR = REPO_ROOT / "checkpoints"
DEFAULT_SHIPPED = "demo-kmeans20"  # the shipped C-EDM: preferred as the app's default


@dataclass
class ModelEntry:
    name: str            # "demo-kmeans20" (shipped) or "<workspace>/<model>" (trained in a workspace)
    path: Path
    info: dict = field(repr=False)
    source: str          # "shipped" or "workspace"

    @property
    def n_conditions(self) -> int:
        return int(self.info.get("n_conditions", 0))

    @property
    def p_uncond(self) -> float:
        return float(self.info.get("p_uncond", 0.0))

    @property
    def condition_spec(self) -> str:
        return str((self.info.get("condition") or {}).get("spec") or ("none" if self.n_conditions == 0 else "?"))

    def describe(self) -> str:
        """'demo-kmeans20 · kmeans:20 (20 conditions) · 32 px' for pickers and logs."""
        cond = "unconditional" if self.n_conditions == 0 else f"{self.condition_spec} ({self.n_conditions} conditions)"
        return f"{self.name} · {cond} · {self.info.get('resolution', '?')} px"


def guidance_note(entry: ModelEntry) -> str | None:
    """Why classifier-free guidance is not possible with this model, or None when it is."""
    if entry.n_conditions == 0:
        return "This model is unconditional: it has no clusters, so there is nothing to guide towards."
    if entry.p_uncond <= 0:
        return ("This model was trained without label dropout (p_uncond = 0): it has no unconditional branch, "
                "so only guidance 1 (plain conditional) is possible.")
    return None


def _scan(folder: Path, source: str, prefix: str = "") -> list[ModelEntry]:
    found = []
    if not folder.is_dir():
        return found
    for d in sorted(p for p in folder.iterdir() if (p / "cedm.json").is_file()):
        try:
            info = read_model_info(d)
        except CedmError:  # a half-written or foreign folder is not a model: leave it out
            continue
        found.append(ModelEntry(prefix + d.name, d, info, source))
    return found


def list_models(ws=None, shipped_dirs: Iterable[Path] | None = None) -> list[ModelEntry]:
    """Shipped models (``shipped_dirs``, default ``<repo>/checkpoints``), then the models trained in ``ws``.
    The shipped C-EDM (``DEFAULT_SHIPPED``) comes first when present."""
    entries: list[ModelEntry] = []
    for folder in ([SHIPPED_DIR] if shipped_dirs is None else shipped_dirs):
        entries += _scan(Path(folder), "shipped")
    entries.sort(key=lambda e: e.name != DEFAULT_SHIPPED)  # stable: otherwise in folder order
    if ws is not None:
        try:
            models = ws.derived_dir("models")  # the demo's lies in its overlay in the home
        except OSError:
            models = None
        if models is not None:
            entries += _scan(models, "workspace", prefix=f"{ws.name}/")
    return entries


def find_model(entries: list[ModelEntry], name: str | None) -> ModelEntry:
    """The entry called ``name`` (as listed), or a clear error."""
    if not entries:
        raise CedmError("no trained model is available: train one (cedm train) or ship one in checkpoints/")
    if not name:
        return entries[0]
    for e in entries:
        if e.name == name:
            return e
    raise CedmError(f"unknown model {name!r}; available: {', '.join(e.name for e in entries)}")
