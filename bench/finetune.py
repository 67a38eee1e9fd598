"""Fine-tuning from the shipped unconditional model vs training from scratch, at equal training minutes.

    python bench/finetune.py --source FOLDER_OR_ZIP --name upload --minutes 3,6,10 --n 500

The upload (``--source``, imported once into a workspace ``--name`` under $CEDM_HOME; an existing workspace of
that name is reused) should hold images the demo models never saw. The measured one: Twemoji (flat emoji,
CC-BY 4.0; the demo is Fluent Emoji 3D), 3,846 SVGs rendered on white at 128 px::

    npm pack @discordapp/twemoji@16.0.1 && tar xzf discordapp-twemoji-16.0.1.tgz   # package/dist/svg/*.svg
    for f in package/dist/svg/*.svg; do rsvg-convert -w 128 -h 128 -b white "$f" -o png/$(basename $f .svg).png; done
    python bench/finetune.py --source png --name twemoji --minutes 3,6,10 --n 500 --threads 1
 Two arms train on it with the Train tab's
settings (small preset, 32 px, batch 32, Adam lr 1e-3 ramped over 5 kimg, EMA half-life 5 % of the images
seen, unconditional, no sample grids): *scratch* from random weights (seed 0) and *fine-tune* from
``checkpoints/demo-uncond`` (``TrainConfig.init``, what "start from the shipped unconditional model" does).
Each arm trains until the next budget and is scored, then resumes (resuming is bit-exact, so the rows of
one arm are points of one run). The budget is the training process's CPU time (``time.process_time``): with
one thread it is the minutes an idle core would take, and it does not depend on what else the machine runs;
the wall time is recorded too. The arms alternate budget by budget, so both see the same load.

Score: FD_EffNetLite0 of ``--n`` unconditional samples (DPM-Solver++(2M), 12 steps, seeds 0..n-1, the same
noise for every row) against all the upload's images at 32 px (cedm.fd's cached real features). The
shipped model itself, before any fine-tuning, is the fine-tune arm's 0-minute row. Each row is written to the
JSON as soon as it is measured; a second run resumes the trainings and skips the rows already measured.
Models go under ``$CEDM_HOME/bench-finetune`` (never into the repository's checkpoints/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHIPPED = ROOT / "checkpoints" / "demo-uncond"
KIMG_CAP = 10_000.0  # the schedule's nominal length: runs are stopped by the budget, never by it


def _machine(threads: int) -> dict:
    import torch
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__}


def _workspace(args):
    from cedm.dataset.importers import import_dataset
    from cedm.errors import CedmError
    from cedm.workspace import open_workspace

    try:
        return open_workspace(None, args.name)
    except CedmError:
        if not args.source:
            raise SystemExit(f"no workspace {args.name!r} yet: pass --source FOLDER_OR_ZIP to import one")
        print(f"importing {args.source} as {args.name} ...", flush=True)
        return import_dataset(args.source, name=args.name, resolution=64)


def _train_until(ws, arm: str, out_dir: Path, budget_s: float, state: dict, lr: float) -> dict:
    """Train ``arm`` (resuming) until its CPU time reaches ``budget_s``; returns its kimg and times."""
    from cedm.model.train import train_workspace

    spent = state.setdefault(arm, {"cpu_s": 0.0, "wall_s": 0.0})
    if spent["cpu_s"] < budget_s:
        c0, w0 = time.process_time(), time.perf_counter()
        before = spent["cpu_s"]
        train_workspace(ws, "none", out_dir=out_dir, resume=True, show_progress=False, kimg=KIMG_CAP,
                        resolution=32, batch=32, lr=lr, lr_rampup_kimg=5.0, checkpoint_kimg=KIMG_CAP,
                        sample_kimg=0, init=str(SHIPPED) if arm == "fine-tune" else None,
                        should_stop=lambda: before + time.process_time() - c0 >= budget_s)
        spent["cpu_s"] = before + time.process_time() - c0
        spent["wall_s"] += time.perf_counter() - w0
    info = json.loads((out_dir / "cedm.json").read_text())["training"]
    return {"kimg": float(info["kimg_done"]), "cpu_s": spent["cpu_s"], "wall_s": spent["wall_s"]}


def _score(model_dir: Path, net, real, args) -> tuple[float, float]:
    from cedm.fd import extract, frechet_distance
    from cedm.model.edm import load_model
    from cedm.sampling.generate import generate

    t = time.perf_counter()
    imgs, _ = generate(load_model(model_dir), args.n, uncond=True, guidance=0.0, steps=12, sampler="dpmpp2m",
                       seed=0, batch_size=50)
    return frechet_distance(extract(net, imgs), real), time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", help="a folder or archive of images the demo never saw (imported once)")
    p.add_argument("--name", default="finetune-upload", help="workspace name under $CEDM_HOME")
    p.add_argument("--minutes", default="3,6,10", help="training budgets, CPU minutes of the training process")
    p.add_argument("--n", type=int, default=500, help="samples per FD")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of both arms (the Train tab's: 1e-3)")
    p.add_argument("--arms", default="scratch,fine-tune", help="which arms to run")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "finetune.json"))
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from cedm import io
    from cedm.fd import backbone_net, frechet_distance, real_features
    from cedm.features.backbones import OFFLINE_BACKBONE
    from cedm.workspace import default_home

    torch.set_num_threads(args.threads)
    ws = _workspace(args)
    budgets = sorted(float(m) for m in args.minutes.split(","))
    home = Path(default_home()) / "bench-finetune" / ws.name
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {}
    if data.get("workspace_hash") != ws.content_hash or data.get("n") != args.n:
        data = {"workspace": ws.name, "workspace_hash": ws.content_hash, "n_images": ws.n, "n": args.n,
                "lr": args.lr, "source": args.source, "shipped": "checkpoints/demo-uncond", "rows": []}
    data["machine"] = _machine(args.threads)
    done = {(r["arm"], r["minutes"]) for r in data["rows"]}
    net = backbone_net(OFFLINE_BACKBONE)
    real = real_features(ws, net, 32)
    state = data.setdefault("spent", {})
    pick = np.random.default_rng(0).choice(len(real), min(args.n, len(real)), replace=False)
    data["floor_FD_EffNetLite0"] = frechet_distance(real[pick], real)  # n real images vs all: the best n can show

    def record(row: dict) -> None:
        row["load_avg"] = round(os.getloadavg()[0], 1)
        data["rows"].append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        io.write_json(out, data)
        print(json.dumps(row), flush=True)

    if ("fine-tune", 0.0) not in done:
        fd, s = _score(SHIPPED, net, real, args)
        record({"arm": "fine-tune", "minutes": 0.0, "kimg": 0.0, "cpu_s": 0.0, "wall_s": 0.0,
                "FD_EffNetLite0": fd, "eval_s": round(s, 1)})
    for m in budgets:
        for arm in ("scratch", "fine-tune"):
            if (arm, m) in done or arm not in args.arms.split(","):
                continue
            folder = home / (arm.replace("-", "") + ("" if args.lr == 1e-3 else f"-lr{args.lr:g}"))
            got = _train_until(ws, arm, folder, m * 60, state, args.lr)
            fd, s = _score(folder, net, real, args)
            record({"arm": arm, "minutes": m, **{k: round(v, 2) for k, v in got.items()},
                    "FD_EffNetLite0": fd, "eval_s": round(s, 1)})

    rows = {(r["arm"], r["minutes"]): r for r in data["rows"]}
    print(f"\nworkspace {ws.name}: {ws.n} images; FD_EffNetLite0 of n = {args.n} samples vs all images at 32 px")
    print(f"floor (n real images vs all): {data['floor_FD_EffNetLite0']:.1f}")
    print("| CPU minutes | scratch kimg | scratch FD | fine-tune kimg | fine-tune FD |")
    print("|---|---|---|---|---|")
    for m in [0.0] + budgets:
        a, b = rows.get(("scratch", m)), rows.get(("fine-tune", m))
        fmt = (lambda r: (f"{r['kimg']:g}", f"{r['FD_EffNetLite0']:.1f}") if r else ("-", "-"))
        print(f"| {m:g} | {' | '.join(fmt(a))} | {' | '.join(fmt(b))} |")


if __name__ == "__main__":
    main()
