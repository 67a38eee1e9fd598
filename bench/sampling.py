"""Sampling speed through the inference engine against the plain reference, in the same run.

*reference*: cedm.inference.reference_sample: float32, no inference mode, no compile, classifier-free guidance
as two separate network calls per evaluation (the official C-EDM code). *engine*: InferenceEngine.generate with
its defaults: inference mode, guidance as one call of batch 2B, bf16 autocast where the hardware has it (CUDA,
AMX CPUs), and on CUDA channels-last + torch.compile with CUDA graphs. Where that default is bf16 on a CPU, the
engine with dtype='fp32' (float-close to the reference) is timed too. Both use the EDM Heun sampler with 18
steps (35 evaluations) and guidance w = 2, the same per-image seeds and clusters; "max|diff|" is the largest
difference of their outputs (images in [-1, 1]).

Also: 16 images with the interactive defaults (INTERACTIVE_DEFAULTS); and under load, 16 concurrent clients
each asking for 4 images vs the same 16 requests one by one. On CUDA: model FLOPs per evaluation (torch's
FLOP counter, one image) and MFU against a measured bf16 matmul peak.

    python bench/sampling.py [--threads 2] [--presets small] [--resolution 32] [--batches 1,16,32,64]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cedm.inference import INTERACTIVE_DEFAULTS, InferenceEngine, reference_sample  # noqa: E402
from cedm.model.edm import CEDM, count_parameters, load_model, save_model  # noqa: E402
from timing import timed  # noqa: E402  (bench/timing.py; scripts run as python bench/<name>.py)

C, W, STEPS, SAMPLER = 10, 2.0, 18, "heun"




def flops_per_eval(model, device):
    """Model FLOPs of one network evaluation for one image (a 2B guided call counts 2 images)."""
    from torch.utils.flop_counter import FlopCounterMode

    R = model.resolution
    x = torch.randn(1, 3, R, R, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(x, torch.tensor(1.0, device=device), torch.zeros(1, dtype=torch.long, device=device))
    return fc.get_total_flops()


def bf16_peak(device):
    """Measured dense bf16 matmul FLOP/s (8192^3, best of 20)."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(20):
        torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 8192 ** 3 / best


def bench_preset(preset, R, device, batches, tmp, threads, reps, peak):
    torch.manual_seed(0)
    m = CEDM.from_preset(preset, R, C, info={"p_uncond": 0.1, "condition": {"q": [1 / C] * C}})
    mdir = save_model(Path(tmp) / f"{preset}{R}", m)
    ref_model = load_model(mdir, device)
    fl = flops_per_eval(ref_model, device) if device.type == "cuda" else None
    rows = []
    with InferenceEngine(device=device, threads=threads, max_batch=max(batches)) as eng:
        eng.warmup(mdir, batch_sizes=batches).result()  # compile only the shapes timed
        fp32_eng = (InferenceEngine(device=device, threads=threads, dtype="fp32")
                    if device.type == "cpu" and eng.dtype is not None else None)
        for B in batches:
            kw = dict(n=B, clusters=[i % C for i in range(B)], guidance=W, steps=STEPS, sampler=SAMPLER, seed=0)
            eng.generate(mdir, output="float", **kw)  # warm (compiled shapes, caches)
            t_ours, (x_ours, _) = timed(lambda: eng.generate(mdir, output="float", **kw), reps)
            t_ref, x_ref = timed(lambda: reference_sample(ref_model, **kw), reps if B <= 16 else 1)
            row = {"preset": preset, "resolution": R, "params_M": round(count_parameters(m) / 1e6, 2),
                   "device": str(device), "dtype": str(eng.dtype or torch.float32).replace("torch.", ""),
                   "batch": B, "ref_s": round(t_ref, 3), "ours_s": round(t_ours, 3),
                   "ref_img_s": round(B / t_ref, 2), "ours_img_s": round(B / t_ours, 2),
                   "speedup": round(t_ref / t_ours, 2),
                   "max_abs_diff": float((x_ours.cpu() - x_ref.cpu()).abs().max())}
            if fl:
                # 35 evaluations, each on 2B images (guidance)
                achieved = fl * 2 * B * (2 * STEPS - 1) / t_ours
                row.update(gflops_per_eval_per_image=round(fl / 1e9, 3), tflops=round(achieved / 1e12, 1),
                           mfu=round(achieved / peak, 3))
            if fp32_eng is not None:  # the float-exact engine path, for comparison with the bf16 default
                fp32_eng.generate(mdir, output="float", **kw)
                t_32, (x_32, _) = timed(lambda: fp32_eng.generate(mdir, output="float", **kw), reps)
                row.update(fp32_img_s=round(B / t_32, 2), fp32_speedup=round(t_ref / t_32, 2),
                           fp32_max_abs_diff=float((x_32 - x_ref.cpu()).abs().max()))
            rows.append(row)
            print(row, flush=True)
        best = max(rows, key=lambda r: r["ours_img_s"])
        for r in rows:
            r["best_batch"] = r is best
        extra = {}
        if device.type == "cpu" and preset == "small":
            # 16 guided images with the interactive defaults (what the app's Generate button does)
            kw = dict(n=16, clusters=list(range(16)) if C >= 16 else [i % C for i in range(16)], guidance=W, seed=0,
                      **INTERACTIVE_DEFAULTS)
            extra["interactive_16_s"] = round(timed(lambda: eng.generate(mdir, **kw), reps)[0], 2)
            extra["interactive"] = INTERACTIVE_DEFAULTS
        extra["load"] = bench_load(eng, mdir, device)
    if fp32_eng is not None:
        fp32_eng.close()
    return rows, extra


def bench_load(eng, mdir, device, clients=16, n=4):
    """16 clients x 4 images at once vs the same requests one by one (interactive defaults, guidance 2)."""
    asks = [dict(n=n, clusters=c % C, guidance=W, seed=100 * c, **INTERACTIVE_DEFAULTS) for c in range(clients)]
    eng.generate(mdir, **asks[0])
    t0 = time.perf_counter()
    for a in asks:
        eng.generate(mdir, **a)
    t_seq = time.perf_counter() - t0
    errors, lat = [], []

    def client(a):
        t = time.perf_counter()
        try:
            eng.generate(mdir, **a)
            lat.append(time.perf_counter() - t)
        except Exception as e:  # counted, not hidden
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(a,)) for a in asks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_conc = time.perf_counter() - t0
    out = {"clients": clients, "images_each": n, "sequential_s": round(t_seq, 2), "concurrent_s": round(t_conc, 2),
           "sequential_img_s": round(clients * n / t_seq, 2), "concurrent_img_s": round(clients * n / t_conc, 2),
           "throughput_ratio": round(t_seq / t_conc, 2), "errors": len(errors),
           "concurrent_latency_max_s": round(max(lat), 2) if lat else None}
    print("load", out, flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on CPU: this 2-core machine is shared, see README)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--presets", default=None, help="default: small on CPU, paper,small on CUDA")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batches", default=None, help="default 1,16,32,64 on CPU, 1,16,64,128,256 on CUDA")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    from cedm.device import resolve_device

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.threads is None and not cuda:
        args.threads = 1
    presets = (args.presets or ("paper,small" if cuda else "small")).split(",")
    batches = [int(b) for b in (args.batches or ("1,16,64,128,256" if cuda else "1,16,32,64")).split(",")]
    peak = bf16_peak(device) if cuda else None
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(device) if cuda else None,
                           "bf16_peak_tflops": round(peak / 1e12, 1) if peak else None,
                           "load_avg_start": os.getloadavg()},
               "settings": {"sampler": SAMPLER, "steps": STEPS, "evaluations": 2 * STEPS - 1, "guidance": W,
                            "conditions": C, "threads": args.threads, "reps": args.reps},
               "rows": [], "extra": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for p in presets:
            rows, extra = bench_preset(p, args.resolution, device, batches, tmp, args.threads, args.reps, peak)
            results["rows"] += rows
            results["extra"][f"{p}{args.resolution}"] = extra
    results["machine"]["load_avg_end"] = os.getloadavg()
    keys = ["preset", "dtype", "batch", "ref_img_s", "ours_img_s", "speedup", "ref_s", "ours_s", "max_abs_diff"]
    if cuda:
        keys += ["gflops_per_eval_per_image", "tflops", "mfu"]
    elif "fp32_img_s" in results["rows"][0]:
        keys += ["fp32_img_s", "fp32_speedup", "fp32_max_abs_diff"]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in results["rows"]:
        print("| " + " | ".join(f"{r[k]:.2e}" if k.endswith("max_abs_diff") else str(r[k]) for k in keys) + " |")
    for name, e in results["extra"].items():
        print(name, json.dumps(e))
    out = Path(__file__).resolve().parent / "results" / "sampling.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
