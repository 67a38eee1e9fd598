"""Sampling speed: cedm's inference engine against the peer a user would write with diffusers, same run.

*peer*: the plain diffusers loop over our own shipped model (REFERENCE.md): ``UNet2DModel.from_pretrained(
<model>/unet_ema)`` + ``EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80, sigma_data=0.5, rho=7,
solver_order=2, final_sigmas_type="zero")`` + classifier-free guidance by concatenating the batch (class ids,
then the null id), under ``torch.inference_mode()`` (and ``torch.autocast`` for bf16). *engine*:
``InferenceEngine.generate`` with DPM-Solver++(2M), the same steps, guidance, seeds, clusters, dtype and
threads: equal work. *engine interval*: the same with guidance only inside the model's default sigma interval
(cedm.sampling.guidance; outside it one conditional call of batch B instead of 2B): less work by design.

Rows: batch 1, 16, 64 in fp32 and bf16 (CPU), repeated ``--reps`` times, interleaved (engine, peer, engine
interval for every cell in turn, order alternating) so that a shared machine's load hits all alike; the
table gives medians. ``--separate``: every measurement in a fresh process that holds only that side (as a user
runs one or the other; in one process the two sides' OpenMP thread teams share the cores), still interleaved. ``uint8 diff``: the largest difference of engine and peer images in uint8 levels (fp32:
must be <= 1). On CUDA the rows are bf16 and fp32 too, at batch 1, 16, 64, 256.

    python bench/sampling.py [--model checkpoints/demo-kmeans20] [--threads 1] [--batches 1,16,64] [--reps 5]
    python bench/sampling.py --threads 2 --separate --no-interval --reps 5     # one process per measurement
    python bench/sampling.py --guidance-cost [--batches 16] [--reps 3]   # what each guidance kind costs per image
"""
import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cedm.inference import INTERACTIVE_DEFAULTS, InferenceEngine  # noqa: E402
from cedm.model.edm import read_model_info  # noqa: E402

W, STEPS, SAMPLER = 2.0, 12, "dpmpp2m"


def peer_sample(unet, labels, w, steps, seed, dtype=None, device="cpu"):
    """The diffusers loop, written as a user would: returns float32 (n, 3, R, R) in [-1, 1]."""
    from diffusers import EDMDPMSolverMultistepScheduler
    from diffusers.utils.torch_utils import randn_tensor

    sched = EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0,
                                           solver_order=2, final_sigmas_type="zero")
    sched.set_timesteps(steps, device=device)
    n, R = len(labels), unet.config.sample_size
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    x = randn_tensor((n, 3, R, R), generator=gens).to(device) * sched.init_noise_sigma
    both = torch.cat([labels, torch.full_like(labels, unet.config.num_class_embeds - 1)]).to(device)
    dev_type = torch.device(device).type
    autocast = torch.autocast(dev_type, dtype=dtype, enabled=dtype is not None)
    with torch.inference_mode(), autocast:
        for t in sched.timesteps:
            model_in = sched.scale_model_input(torch.cat([x, x]), t)
            out = unet(model_in, t, class_labels=both).sample
            cond, uncond = out.chunk(2)
            x = sched.step(uncond + w * (cond - uncond), t, x).prev_sample
    return x.float().cpu()


def to_uint8(x):
    return ((x.float() + 1) * 127.5).round().clamp(0, 255)


def bench_load(eng, mdir, n_cond, clients=16, n=4):
    """16 clients x 4 images at once vs the same requests one by one (interactive defaults, guidance 2)."""
    asks = [dict(n=n, clusters=c % n_cond, guidance=W, seed=100 * c, **INTERACTIVE_DEFAULTS) for c in range(clients)]
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
           "throughput_ratio": round(t_seq / t_conc, 2), "errors": len(errors),
           "concurrent_latency_max_s": round(max(lat), 2) if lat else None}
    print("load", out, flush=True)
    return out


def guidance_cost(args) -> None:
    """Seconds per image of each guidance kind on the demo, same images, seeds, sampler and steps, one process,
    interleaved: the unconditional model unguided; the C-EDM with classifier-free guidance (two network rows per
    image and step); the unconditional model with probe guidance (a backward pass through the denoiser and the
    probe's feature pass per evaluation); best of 4 by the probe (four unguided draws, the probe scores them)."""
    from cedm.model.edm import load_model
    from cedm.probes.probe import ProbeSettings, get_probe
    from cedm.probes.sample import generate_with_probe
    from cedm.sampling.generate import generate
    from cedm.workspace import open_demo

    torch.set_num_threads(args.threads or 1)
    B = int((args.batches or "16").split(",")[0])
    uncond_dir, cedm_dir = ROOT / "checkpoints" / "demo-uncond", Path(args.model)
    uncond, cedm = load_model(uncond_dir), load_model(cedm_dir)
    t = time.perf_counter()
    probe, _, trained = get_probe(open_demo(), uncond, "skmeans:20", ProbeSettings(), model_dir=uncond_dir)
    probe_s = probe.info["report"]["seconds"]
    print(f"probe ready in {time.perf_counter() - t:.0f} s (trained in {probe_s:.0f} s)", flush=True)
    kw = dict(steps=STEPS, sampler=SAMPLER, seed=0, batch_size=B)
    kinds = {
        "unconditional, unguided": lambda: generate(uncond, B, **kw),
        f"C-EDM, classifier-free w = {W:g}": lambda: generate(cedm, B, guidance=W, **kw),
        "probe guidance w = 1": lambda: generate_with_probe(uncond, probe, B, None, 1.0, **kw),
        "best of 4 by the probe": lambda: generate_with_probe(uncond, probe, B, None, 0.0, best_of=4, **kw),
    }
    times = {k: [] for k in kinds}
    for k, fn in kinds.items():  # warm-up
        fn()
    for rep in range(args.reps):
        for k in (list(kinds) if rep % 2 == 0 else list(kinds)[::-1]):
            t = time.perf_counter()
            kinds[k]()
            times[k].append(time.perf_counter() - t)
        print(f"rep {rep + 1}/{args.reps} done, load {os.getloadavg()[0]:.1f}", flush=True)
    cfg = statistics.median(times[f"C-EDM, classifier-free w = {W:g}"])
    rows = [{"guidance": k, "seconds_per_image": round(statistics.median(v) / B, 4),
             "vs_classifier_free": round(statistics.median(v) / cfg, 2), "runs": [round(x, 3) for x in v]}
            for k, v in times.items()]
    print(f"\n| guidance ({B} images, {SAMPLER} {STEPS} steps) | s / image | vs classifier-free |\n|---|---|---|")
    for r in rows:
        print(f"| {r['guidance']} | {r['seconds_per_image']} | {r['vs_classifier_free']}x |")
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                           "torch": torch.__version__, "load_avg_end": os.getloadavg()},
                               "settings": {"batch": B, "sampler": SAMPLER, "steps": STEPS, "reps": args.reps,
                                            "threads": torch.get_num_threads(), "probe_training_s": probe_s,
                                            "statistic": "median"},
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


def runner(mdir, C, variants, dtypes, max_batch, device, threads, interval):
    """run(B, dtype, what) -> (seconds, float images) for the variants asked, and a close()."""
    unet = None
    if "peer" in variants:
        from diffusers import UNet2DModel
        unet = UNet2DModel.from_pretrained(mdir / "unet_ema", use_safetensors=True).to(device).eval()
    engines = {(d, s): InferenceEngine(device=device, threads=threads, dtype=d, max_batch=max_batch, streams=s)
               for d in dtypes for s in ([True] if set(variants) & {"engine", "interval"} else [])
               + ([False] if "one_stream" in variants else [])}

    def run(B, d, what):
        dt = torch.bfloat16 if d == "bf16" else None
        t = time.perf_counter()
        if what == "peer":
            out = peer_sample(unet, torch.tensor([i % C for i in range(B)]), W, STEPS, 0, dt, device)
        else:
            extra = {"guidance_interval": interval} if what == "interval" else {}
            out = engines[(d, what != "one_stream")].generate(
                mdir, output="float", n=B, clusters=[i % C for i in range(B)], guidance=W, steps=STEPS,
                sampler=SAMPLER, seed=0, **extra)[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, out

    def close():
        for e in engines.values():
            e.close()

    return run, close


def separate_runner(args, threads):
    """run(B, dtype, what) in a fresh process each time: the child's median over its runs, and its last output."""
    import subprocess
    import tempfile

    tmp = tempfile.TemporaryDirectory()

    def run(B, d, what):
        out = Path(tmp.name) / f"{what}_{B}_{d}.npy"
        cmd = [sys.executable, __file__, "--child", what, str(B), d, "--child-out", str(out), "--model", args.model,
               "--threads", str(threads or 0), "--device", args.device, "--reps", "3"]
        cmd += ["--no-interval"] if args.no_interval else (["--interval", args.interval] if args.interval else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        ts = json.loads(res.stdout.strip().splitlines()[-1])["times"]
        return statistics.median(ts), torch.from_numpy(np.load(out))

    return run, tmp.cleanup


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "checkpoints" / "demo-kmeans20"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for both sides (default 1 on CPU: the machine is shared, see README)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", default=None, help="default 1,16,64 (CPU), 1,16,64,256 (CUDA)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--interval", default=None, metavar="LO,HI",
                    help="guidance interval of the engine-interval column (default: the model's default)")
    ap.add_argument("--no-interval", action="store_true", help="skip the engine-with-guidance-interval column")
    ap.add_argument("--one-stream", action="store_true",
                    help="also the engine without parallel CPU streams (what that lever buys at 2+ threads)")
    ap.add_argument("--separate", action="store_true", help="each measurement in its own process (see the docstring)")
    ap.add_argument("--child", nargs=3, metavar=("WHAT", "BATCH", "DTYPE"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sampling.json"))
    ap.add_argument("--load", action="store_true", help="also the 16-client load test")
    ap.add_argument("--guidance-cost", action="store_true",
                    help="instead: seconds per image of each guidance kind (unguided, classifier-free, probe, "
                         "best of 4) at the first --batches size (default 16); writes --out")
    args = ap.parse_args()
    if args.guidance_cost:
        if args.out == str(ROOT / "bench" / "results" / "sampling.json"):
            args.out = str(ROOT / "bench" / "results" / "guidance_cost.json")
        return guidance_cost(args)
    from cedm.device import resolve_device
    from cedm.model.info import default_guidance_interval
    from cedm.sampling.guidance import parse_interval

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    threads = args.threads or (None if cuda else 1)
    if threads:
        torch.set_num_threads(threads)
    batches = [int(b) for b in (args.batches or ("1,16,64,256" if cuda else "1,16,64")).split(",")]
    dtypes = args.dtypes.split(",")
    mdir = Path(args.model)
    info = read_model_info(mdir)
    C = int(info["n_conditions"])
    interval = None if args.no_interval else (parse_interval(args.interval) if args.interval else
                                              default_guidance_interval(info))
    variants = ["engine", "peer"] + ([] if interval is None else ["interval"]) + (["one_stream"] if args.one_stream
                                                                                 else [])
    if args.child:  # one side only, in this fresh process: warm once, time --reps runs, save the last output
        what, B, d = args.child[0], int(args.child[1]), args.child[2]
        run, close = runner(mdir, C, [what], [d], B, device, threads, interval)
        run(B, d, what)
        ts, out = [], None
        for _ in range(args.reps):
            t, out = run(B, d, what)
            ts.append(t)
        close()
        np.save(args.child_out, out.numpy())
        print(json.dumps({"times": ts}))
        return
    cells = [(B, d) for d in dtypes for B in batches]
    times = {(B, d, k): [] for B, d in cells for k in ("engine", "peer", "interval", "one_stream")}
    if args.separate:
        run, close = separate_runner(args, threads)
    else:
        run, close = runner(mdir, C, variants, dtypes, max(batches), device, threads, interval)
    load_start = os.getloadavg()
    if not args.separate:  # warm every path once (a child process warms itself)
        for B, d in cells:
            for what in variants:
                run(B, d, what)
    outs = {}
    for rep in range(args.reps):
        for B, d in cells:
            for what in (variants if rep % 2 == 0 else variants[::-1]):
                t, out = run(B, d, what)
                times[(B, d, what)].append(t)
                outs.setdefault((B, d, what), out)
        print(f"rep {rep + 1}/{args.reps} done, load {os.getloadavg()[0]:.1f}", flush=True)
    diffs = {(B, d): float((to_uint8(outs[(B, d, "engine")]) - to_uint8(outs[(B, d, "peer")])).abs().max())
             for B, d in cells}
    rows = []
    for B, d in cells:
        med = {k: statistics.median(times[(B, d, k)]) if times[(B, d, k)] else None
               for k in ("engine", "peer", "interval", "one_stream")}
        row = {"batch": B, "dtype": d, "peer_s": round(med["peer"], 3), "engine_s": round(med["engine"], 3),
               "speedup": round(med["peer"] / med["engine"], 2), "uint8_diff": diffs[(B, d)],
               "peer_runs": [round(t, 3) for t in times[(B, d, "peer")]],
               "engine_runs": [round(t, 3) for t in times[(B, d, "engine")]]}
        for k in ("interval", "one_stream"):  # the optional columns
            if med[k] is not None:
                row.update({f"{k}_s": round(med[k], 3), f"{k}_speedup": round(med["peer"] / med[k], 2),
                            f"{k}_runs": [round(t, 3) for t in times[(B, d, k)]]})
        rows.append(row)
    close()
    extra = {}
    if args.load:
        with InferenceEngine(device=device, threads=threads, max_batch=64) as eng:
            extra["load"] = bench_load(eng, mdir, C)
    results = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                           "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(device) if cuda else None,
                           "load_avg_start": load_start, "load_avg_end": os.getloadavg()},
               "settings": {"model": mdir.name, "sampler": SAMPLER, "steps": STEPS, "guidance": W,
                            "guidance_interval": interval, "threads": torch.get_num_threads(), "reps": args.reps,
                            "statistic": "median", "separate_processes": args.separate},
               "rows": rows, "extra": extra}
    keys = ["batch", "dtype", "peer_s", "engine_s", "speedup", "uint8_diff"]
    if interval is not None:
        keys += ["interval_s", "interval_speedup"]
    if args.one_stream:
        keys += ["one_stream_s", "one_stream_speedup"]
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    out = Path(args.out)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
