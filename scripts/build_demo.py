#!/usr/bin/env python3
"""Build the shipped demo workspace (assets/demo) from two registry packages, reproducibly.

Images: npm ``@lobehub/fluent-emoji-3d@1.1.0`` (Fluent Emoji 3D by Microsoft, MIT; 3,391 webp,
256x256 RGBA), fetched with ``npm pack`` into a temporary folder and checked against its pinned
integrity hash. Labels: Debian ``unicode-data`` (``/usr/share/unicode/emoji/emoji-test.txt``) gives
each emoji's group, subgroup and name; the subgroup is the ground truth (evaluation only).

Every image is kept; those whose code points are not in emoji-test.txt get no label. Each image is
composited onto white and resized to 64x64 (cedm.dataset.imaging.square_resize). Rows are sorted by
file name. The result is an ordinary workspace, except that the images are stored as a compressed
``images.npz`` (written with fixed zip timestamps, so a rebuild is byte-identical) instead of the
42 MB ``images.npy``. assets/demo is replaced atomically; nothing else outside a temporary folder is
written.

    python scripts/build_demo.py                       # npm pack + the system's emoji-test.txt
    python scripts/build_demo.py --package-tgz X.tgz --emoji-test emoji-test.txt   # fully offline
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io as _io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cedm import io  # noqa: E402
from cedm import workspace as wsp  # noqa: E402
from cedm.dataset.imaging import square_resize  # noqa: E402
from cedm.errors import CedmError  # noqa: E402

NPM_PACKAGE = "@lobehub/fluent-emoji-3d"
NPM_VERSION = "1.1.0"
# `npm view @lobehub/fluent-emoji-3d@1.1.0 dist.integrity`: a changed tarball fails the build loudly.
NPM_INTEGRITY = "sha512-Wlq2lVStTnr8BDpIJ0pEnTKO4LuDxxqTEhTvRtD1DLRF0me7ogeRQjKoehDHXuVJ2Qaecgl5wRBv60lUAG3h7g=="
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
SOURCE = f"npm:{NPM_PACKAGE}@{NPM_VERSION} + debian:unicode-data"
RESOLUTION = 64
VARIATION_SELECTOR_16 = 0xFE0F
CANCEL_TAG = 0xE007F
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed member timestamp: same images -> same npz bytes

ATTRIBUTION = """\
# Demo dataset: attribution and licences

`assets/demo` is built by `scripts/build_demo.py` from two packages; it is redistributed under their terms.

## Images: Fluent Emoji 3D (MIT)

The 3,391 images are the 3D style of **Fluent Emoji** by **Microsoft**
(<https://github.com/microsoft/fluentui-emoji>), taken from the npm package
`@lobehub/fluent-emoji-3d@1.1.0` (<https://github.com/lobehub/fluent-emoji>, MIT), composited onto white
and resized to 64x64 pixels.

    MIT License

    Copyright (c) Microsoft Corporation.

    Permission is hereby granted, free of charge, to any person obtaining a copy
    of this software and associated documentation files (the "Software"), to deal
    in the Software without restriction, including without limitation the rights
    to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
    copies of the Software, and to permit persons to whom the Software is
    furnished to do so, subject to the following conditions:

    The above copyright notice and this permission notice shall be included in all
    copies or substantial portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
    IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
    FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
    AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
    LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
    OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
    SOFTWARE.

## Labels: Unicode emoji data (Unicode License)

Group, subgroup and name of each emoji (`emoji.json`, `ground_truth.json`) come from `emoji-test.txt`
({emoji_version}) of the Unicode Emoji data (UTS #51), as packaged by Debian's `unicode-data`.
Copyright © 1991-2022 Unicode, Inc. Distributed under the Unicode License
(<https://www.unicode.org/license.txt>); see <https://www.unicode.org/terms_of_use.html>.
Unicode and the Unicode Logo are registered trademarks of Unicode, Inc.

The labels are ground truth for evaluation only; nothing in cedm trains on them.
"""


# --- emoji-test.txt ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmojiInfo:
    codepoints: tuple[int, ...]  # as listed in emoji-test.txt (fully-qualified when there is one)
    name: str
    group: str
    subgroup: str
    status: str


def match_key(codepoints) -> tuple[int, ...]:
    """What identifies an emoji across spellings: drop U+FE0F, and the CANCEL TAG that file names omit."""
    key = tuple(int(c) for c in codepoints if int(c) != VARIATION_SELECTOR_16)
    return key[:-1] if len(key) > 1 and key[-1] == CANCEL_TAG else key


def parse_emoji_test(text: str) -> dict[tuple[int, ...], EmojiInfo]:
    """``match_key -> EmojiInfo`` from emoji-test.txt; the first (fully-qualified) spelling wins.

    Data lines look like ``1F600 ; fully-qualified # 😀 E1.0 grinning face`` under the most recent
    ``# group:`` and ``# subgroup:`` headers.
    """
    table: dict[tuple[int, ...], EmojiInfo] = {}
    group = subgroup = None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line.startswith("# group:"):
            group, subgroup = line.split(":", 1)[1].strip(), None
            continue
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
            continue
        if not line or line.startswith("#"):
            continue
        fields, _, comment = line.partition("#")
        cps, sep, status = fields.partition(";")
        if not sep or group is None or subgroup is None:
            raise ValueError(f"emoji-test.txt line {lineno}: unexpected format: {line!r}")
        codepoints = tuple(int(c, 16) for c in cps.split())
        # comment: "<emoji> E<version> <name>"
        parts = comment.strip().split(" ", 2)
        name = parts[2].strip() if len(parts) == 3 and parts[1].startswith("E") else comment.strip()
        table.setdefault(match_key(codepoints),
                         EmojiInfo(codepoints, name, group, subgroup, status.strip()))
    return table


def emoji_test_version(text: str) -> str:
    for line in text.splitlines()[:20]:
        if line.startswith("# Version:"):
            return "Emoji " + line.split(":", 1)[1].strip()
    return "unknown version"


def file_codepoints(filename: str) -> tuple[int, ...]:
    """Code points from a file name such as ``1f44b-1f3fb.webp``, ``00a9-fe0f.webp`` or
    ``1f3f4-e0067_e0062_e0065_e006e_e0067.webp`` ('-' or '_' between hex numbers, any case)."""
    stem = filename.rsplit("/", 1)[-1].split(".", 1)[0]
    try:
        return tuple(int(part, 16) for part in stem.replace("_", "-").split("-"))
    except ValueError:
        raise ValueError(f"not a code-point file name: {filename!r}") from None


def lookup(table: dict[tuple[int, ...], EmojiInfo], filename: str) -> EmojiInfo | None:
    return table.get(match_key(file_codepoints(filename)))


# --- inputs --------------------------------------------------------------------------------------
def npm_integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def npm_pack(dest: Path) -> Path:
    """``npm pack`` the pinned package into ``dest`` (a temporary folder); returns the tarball."""
    cmd = ["npm", "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent", "--ignore-scripts",
           "--pack-destination", str(dest)]
    env = {**os.environ, "npm_config_cache": str(dest / "npm-cache")}  # leave the user's npm cache alone
    try:
        subprocess.run(cmd, cwd=dest, env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    except FileNotFoundError:
        raise CedmError("npm is not installed; install Node.js/npm or pass --package-tgz") from None
    except subprocess.CalledProcessError as e:
        raise CedmError(f"npm pack failed: {e.stderr.strip()[-500:]}") from None
    tgz = sorted(dest.glob("*.tgz"))
    if len(tgz) != 1:
        raise CedmError(f"npm pack produced {len(tgz)} tarballs in {dest}")
    return tgz[0]


def read_webps(tgz: Path) -> list[tuple[str, bytes]]:
    """(file name, bytes) of every ``package/assets/*.webp`` in the tarball, sorted by name.

    Read straight from the archive, never extracted, so member names cannot write anywhere."""
    data = tgz.read_bytes()
    got = npm_integrity(data)
    if got != NPM_INTEGRITY:
        raise CedmError(f"{tgz.name}: integrity {got} does not match the pinned {NPM_INTEGRITY}")
    out = []
    with tarfile.open(fileobj=_io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith("package/assets/") and m.name.endswith(".webp"):
                out.append((m.name[len("package/assets/"):], tar.extractfile(m).read()))
    names = [n for n, _ in out]
    if len(set(names)) != len(names) or any("/" in n for n in names):
        raise CedmError(f"{tgz.name}: unexpected layout of package/assets")
    return sorted(out)


def to_image(data: bytes, name: str) -> np.ndarray:
    """Decode one webp and bring it to the working resolution, composited onto white."""
    try:
        with Image.open(_io.BytesIO(data)) as img:
            img.load()
            return square_resize(img, RESOLUTION)
    except (OSError, ValueError) as e:  # the pinned package decodes cleanly; say which file if not
        raise CedmError(f"cannot decode {name}: {e}") from None


# --- output --------------------------------------------------------------------------------------
def save_npz_deterministic(path: Path, images: np.ndarray) -> None:
    """Like ``np.savez_compressed(path, images=images)`` but with a fixed member timestamp."""
    info = zipfile.ZipInfo("images.npy", date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    with io.atomic_file(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(images), allow_pickle=False)


def hex_cps(codepoints) -> list[str]:
    return [f"{c:04X}" for c in codepoints]


def build(out_dir: Path, package_tgz: Path | None = None, emoji_test: Path = EMOJI_TEST,
          progress=None) -> dict:
    """Build the demo workspace and atomically replace ``out_dir`` with it. Returns a summary."""
    t0 = time.perf_counter()
    if not emoji_test.is_file():
        raise CedmError(f"{emoji_test} not found: install Debian's unicode-data "
                        "(apt-get install -y unicode-data) or pass --emoji-test")
    test_text = emoji_test.read_text(encoding="utf-8")
    table = parse_emoji_test(test_text)
    version = emoji_test_version(test_text)

    with tempfile.TemporaryDirectory(prefix="cedm-demo-build-") as tmp_str:
        tmp = Path(tmp_str)
        tgz = package_tgz or npm_pack(tmp)
        files = read_webps(tgz)
        infos = [lookup(table, name) for name, _ in files]
        labels = [info.subgroup if info else None for info in infos]
        names = sorted({lab for lab in labels if lab is not None})
        unmatched = [name for (name, _), info in zip(files, infos) if info is None]

        home = tmp / "home"
        with wsp.WorkspaceBuilder(home, "demo-build", RESOLUTION, len(files)) as b:
            for i, ((name, data), label) in enumerate(zip(files, labels)):
                b.add(to_image(data, name), name, label)
                if progress:
                    progress(i + 1, len(files), "images")
            report = {"n_found": len(files), "n_imported": len(files), "skipped": [],
                      "n_labelled": len(files) - len(unmatched), "unlabelled": unmatched}
            b.finish(SOURCE, report, label_names=names)
        built = home / "workspaces" / "demo-build"

        manifest = io.read_json(built / "manifest.json")
        previous = out_dir / "manifest.json"
        if previous.is_file():  # an unchanged rebuild keeps its creation time: byte-identical output
            old = io.read_json(previous)
            if old.get("content_hash") == manifest["content_hash"]:
                manifest["created"] = old.get("created", manifest["created"])
        manifest.update({
            "name": wsp.DEMO_NAME, "images_file": "images.npz", "attribution": "ATTRIBUTION.md",
            "build": {"script": "scripts/build_demo.py", "npm_package": f"{NPM_PACKAGE}@{NPM_VERSION}",
                      "npm_integrity": NPM_INTEGRITY, "unicode_emoji": version,
                      "ground_truth": "Unicode emoji subgroup"},
        })
        emoji_rows = [{"path": name, "codepoints": hex_cps(file_codepoints(name)),
                       "emoji": "".join(map(chr, info.codepoints)) if info else None,
                       "name": info.name if info else None, "group": info.group if info else None,
                       "subgroup": info.subgroup if info else None}
                      for (name, _), info in zip(files, infos)]

        with io.atomic_dir(out_dir) as stage:
            save_npz_deterministic(stage / "images.npz", io.load_npy(built / "images.npy", mmap=True))
            for fname in ("paths.json", "ground_truth.json", "import_report.json"):
                io.write_bytes(stage / fname, (built / fname).read_bytes())
            io.write_json(stage / "emoji.json", emoji_rows)
            io.write_text(stage / "ATTRIBUTION.md", ATTRIBUTION.replace("{emoji_version}", version))
            io.write_json(stage / "manifest.json", manifest)  # last: marks the folder complete

    n_labelled = len(files) - len(unmatched)
    return {
        "n_images": len(files), "n_labelled": n_labelled, "match_rate": n_labelled / len(files),
        "unlabelled": unmatched, "n_subgroups": len(names),
        "n_groups": len({info.group for info in infos if info}), "unicode_emoji": version,
        "content_hash": manifest["content_hash"],
        "size_bytes": sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file()),
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=wsp.DEMO_DIR, help="output folder (default assets/demo)")
    ap.add_argument("--package-tgz", type=Path, help=f"use this {NPM_PACKAGE}-{NPM_VERSION}.tgz instead of npm pack")
    ap.add_argument("--emoji-test", type=Path, default=EMOJI_TEST, help="path of emoji-test.txt")
    args = ap.parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:  # progress is a nicety here
        tqdm = None
    bar = tqdm(unit="img", desc="demo") if tqdm else None

    def progress(done, total, desc):
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    try:
        summary = build(args.out, args.package_tgz, args.emoji_test, progress)
    except CedmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    summary["size_mb"] = round(summary["size_bytes"] / 2**20, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
