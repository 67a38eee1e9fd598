"""Helpers for the app tests: a stand-in demo, an in-process app on a free port, test archives, Chromium."""
from __future__ import annotations

import contextlib
import io
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

DEMO_N = 100
DEMO_CLASSES = ["red", "green", "blue"]
COLOURS = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 220, 30), (200, 40, 200), (20, 210, 210)]


def make_stand_in_demo(folder: Path) -> Path:
    """A tiny workspace with ground truth, used as the demo until the real one is in the tree."""
    from cedm import workspace as wsp

    rng = np.random.default_rng(0)
    labels = [DEMO_CLASSES[i % 3] for i in range(DEMO_N)]
    images = np.empty((DEMO_N, 16, 16, 3), np.uint8)
    for i, lab in enumerate(labels):
        base = np.array(COLOURS[DEMO_CLASSES.index(lab)], np.int16)
        images[i] = np.clip(base + rng.integers(-20, 21, (16, 16, 3)), 0, 255)
    ws = wsp.create_from_array(folder, "standin", images, labels=labels, source="synthetic stand-in demo")
    return ws.root


def make_tiny_models(root: Path) -> Path:
    """Random-init 16 px models as a stand-in for shipped checkpoints: conditional with label dropout, conditional
    without (p_uncond = 0: no guidance), unconditional; plus a broken folder that must not be listed."""
    import torch

    from cedm.model.edm import CEDM, save_model

    for i, (name, C, p_uncond) in enumerate((("tiny-c4", 4, 0.1), ("tiny-nodrop", 4, 0.0), ("tiny-uncond", 0, 0.0))):
        # seeded: the weights must not depend on what ran before (some random draws saturate every pixel)
        with torch.random.fork_rng():
            torch.manual_seed(i)
            m = CEDM.from_preset("tiny", 16, C, info={"p_uncond": p_uncond,
                                                      "condition": {"spec": "kmeans:4" if C else "none",
                                                                    "q": [0.1, 0.2, 0.3, 0.4][:C]}})
        save_model(root / name, m)
    (root / "not-a-model").mkdir(parents=True, exist_ok=True)
    (root / "not-a-model" / "cedm.json").write_text("{broken")
    return root


def png_bytes(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_zip(path: Path, n_images: int = 6, junk: bool = True) -> Path:
    """n solid-colour PNGs in a subfolder, plus (junk) a text file and a corrupt PNG to be skipped."""
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n_images):
            z.writestr(f"pics/img{i}.png", png_bytes(COLOURS[i % len(COLOURS)]))
        if junk:
            z.writestr("notes.txt", "not an image")
            z.writestr("pics/broken.png", b"\x89PNG\r\n\x1a\n this is not a real png")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(tmp: Path, real_demo: bool = False, **app_kw):
    """The real app (stand-in demo, or the shipped demo; fresh home) served in-process; yields (url, demo, home).
    ``app_kw``: more build_app arguments (e.g. model_dirs; public=False for local mode; public mode is the
    default here because most tests check the per-visitor isolation)."""
    from cedm import workspace as wsp

    app_kw.setdefault("public", True)
    demo_dir = wsp.REPO_ROOT / "assets" / "demo" if real_demo else make_stand_in_demo(tmp / "demo-src")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wsp, "DEMO_DIR", demo_dir)
        from cedm.ui.app import build_app, launch_options

        home = tmp / "home"
        demo = build_app(home, **app_kw)
        demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                            quiet=True, **launch_options(demo))
        try:
            yield demo.local_url, demo, home
        finally:
            demo.close()


def demo_tree_snapshot() -> dict[str, int]:
    """Every file of the shipped demo with its size: the app must never write there."""
    from cedm import workspace as wsp

    shipped = wsp.REPO_ROOT / "assets" / "demo"
    return {str(p.relative_to(shipped)): p.stat().st_size for p in shipped.rglob("*") if p.is_file()}


def client(url: str):
    from gradio_client import Client

    return Client(url, analytics_enabled=False, verbose=False)


def session_workspaces(home: Path) -> list[Path]:
    """Every visitor workspace folder under the app's home (all sessions)."""
    return sorted(p.parent for p in (home / "sessions").glob("*/workspaces/*/manifest.json"))
