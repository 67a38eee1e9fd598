"""A trained model as one zip file: download it from one installation, use it in another.

The zip holds the model folder's loadable parts only, under one top folder named after the model::

    <name>/cedm.json
    <name>/unet_ema/config.json
    <name>/unet_ema/diffusion_pytorch_model.safetensors
    <name>/unet/...                       (raw weights, when present)

Unzipped, that folder is an ordinary model folder (``cedm sample <name>/``, or put it in a workspace's
``models/``). ``install_model_zip`` accepts exactly these names (JSON and safetensors, nothing executable, no
pickles), checks sizes before reading, reads the safetensors header and loads the network before the model
appears, atomically, in the target folder.
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

from cedm import io
from cedm.errors import CedmError

PARTS = ("cedm.json", "unet_ema/config.json", "unet_ema/diffusion_pytorch_model.safetensors",
         "unet/config.json", "unet/diffusion_pytorch_model.safetensors")
REQUIRED = PARTS[:3]
MAX_JSON_BYTES = 1 << 20
MAX_MODEL_BYTES = 2 << 30  # one safetensors file
MAX_ZIP_BYTES = 4 << 30
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def pack_model(model_dir, out_zip) -> Path:
    """Write the loadable parts of ``model_dir`` (a folder with cedm.json) into ``out_zip``."""
    from cedm.model.edm import read_model_info

    model_dir, out_zip = Path(model_dir), Path(out_zip)
    read_model_info(model_dir)
    name = model_dir.name
    with io.atomic_file(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for part in PARTS:
            f = model_dir / part
            if f.is_file() and not f.is_symlink():
                z.write(f, f"{name}/{part}")
    return out_zip


def _plan(z: zipfile.ZipFile) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """(top folder name, part -> member) of a model zip, or a CedmError saying what is wrong."""
    members = [m for m in z.infolist() if not m.is_dir()]
    if not members:
        raise CedmError("the zip is empty")
    tops = {m.filename.split("/", 1)[0] for m in members}
    if len(tops) != 1 or not all("/" in m.filename for m in members):
        raise CedmError("a model zip holds one folder (the model's name) with cedm.json and unet_ema/ in it")
    top = tops.pop()
    if not _NAME_RE.match(top):
        raise CedmError(f"a model zip holds one folder with a plain name (letters, digits, '.', '_', '-'), "
                        f"not {top[:40]!r}")
    found: dict[str, zipfile.ZipInfo] = {}
    for m in members:
        part = m.filename.split("/", 1)[1]
        if part not in PARTS:
            raise CedmError(f"unexpected file {m.filename[:80]!r} in the model zip: only cedm.json, config.json "
                            "and .safetensors weights are accepted (never pickles or code)")
        if (m.external_attr >> 16) & 0o170000 == 0o120000:
            raise CedmError(f"{m.filename[:80]!r} is a link; a model zip holds plain files only")
        limit = MAX_JSON_BYTES if part.endswith(".json") else MAX_MODEL_BYTES
        if m.file_size > limit:
            raise CedmError(f"{m.filename[:80]!r} is {m.file_size / 2**20:,.0f} MB; at most "
                            f"{limit / 2**20:,.0f} MB here")
        found[part] = m
    missing = [p for p in REQUIRED if p not in found]
    if missing:
        raise CedmError(f"the model zip lacks {', '.join(missing)}")
    if sum(m.file_size for m in found.values()) > MAX_ZIP_BYTES:
        raise CedmError("the model zip is too large")
    return top, found


def _check_safetensors(path: Path) -> None:
    """The file is a safetensors file: an 8-byte header length, a JSON header, tensors inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, 100 << 20):
            raise CedmError(f"{path.name} is not a safetensors file")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CedmError(f"{path.name} is not a safetensors file (unreadable header)") from None
    for k, v in header.items():
        if k == "__metadata__":
            continue
        start, stop = v.get("data_offsets", (0, -1)) if isinstance(v, dict) else (0, -1)
        if not 0 <= start <= stop <= size - 8 - n:
            raise CedmError(f"{path.name} is not a valid safetensors file (tensor {k[:40]!r} lies outside it)")


def install_model_zip(zip_path, models_dir, name: str | None = None, overwrite: bool = False) -> Path:
    """Validate a model zip and install it as ``models_dir/<name>`` (default: the zip's folder name)."""
    from cedm.model.edm import load_model, read_model_info

    models_dir = Path(models_dir)
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise CedmError("the file is not a zip archive of a model (download one from the Models tab)") from None
    with z:
        top, parts = _plan(z)
        name = (name or "").strip() or top
        if not _NAME_RE.match(name):
            raise CedmError(f"invalid model name {name[:70]!r}: use 1-64 letters, digits, '.', '_' or '-'")
        final = models_dir / name
        if final.exists() and not overwrite:
            raise CedmError(f"a model named {name!r} already exists here; choose another name")
        with io.atomic_dir(final) as tmp:
            for part, m in parts.items():
                dest = tmp / part
                dest.parent.mkdir(parents=True, exist_ok=True)
                limit = m.file_size
                with z.open(m) as src, open(dest, "wb") as out:
                    done = 0
                    while chunk := src.read(1 << 20):
                        done += len(chunk)
                        if done > limit:  # the header lied about the size
                            raise CedmError(f"{m.filename[:80]!r} is larger than its zip entry says")
                        out.write(chunk)
            for part in parts:
                if part.endswith(".safetensors"):
                    _check_safetensors(tmp / part)
            read_model_info(tmp)
            try:
                load_model(tmp, "cpu")  # the network really loads
            except CedmError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure here means a broken upload
                raise CedmError(f"the model does not load: {type(e).__name__}") from None
    return final
