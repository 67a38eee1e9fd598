"""How noisy is FD_EffNetLite0 at n samples? The yardstick for choosing a default guidance interval.

For each setting (full-range guidance, guidance only for sigma in [lo, hi]) and each of several disjoint
seed sets (image i of set S has seed S + i, its condition drawn from q(c) with that seed), ``--n`` images are
sampled through the inference engine (DPM-Solver++(2M), 12 steps, w = 2, as bench/guidance_interval.py) and
their EfficientNet-Lite0 features kept under ``$CEDM_HOME/bench/fd_noise/`` (so an interrupted run resumes).
Reported: FD of every (setting, seed set) against all real images; per setting the mean and spread over
seed sets (the noise a single n-sample FD carries); the paired difference interval - full on each seed set
(same seeds and conditions, so shared noise cancels), with its mean and spread; and a bootstrap over samples
of chosen sets (resampling the n generated images with replacement). Prints a table and writes bench/results/fd_noise.json.

    python bench/fd_noise.py [--n 500] [--settings "full;0.3,5"] [--seeds 500,1000] [--boot 20] [--boot-seeds 0]
"""
import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cedm.fd import backbone_net, extract, frechet_distance, real_features  # noqa: E402
from cedm.inference import InferenceEngine  # noqa: E402
from cedm.model.edm import read_model_info  # noqa: E402
from cedm.sampling.guidance import parse_interval  # noqa: E402
from cedm.workspace import default_home, open_demo  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from guidance_interval import sampling_arguments  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    sampling_arguments(ap)
    ap.add_argument("--settings", default="full;0.3,5", help="';'-separated: 'full' or LO,HI")
    ap.add_argument("--seeds", default="500,1000", help="first seed of each disjoint seed set")
    ap.add_argument("--boot", type=int, default=20, help="bootstrap resamples per set (0: none)")
    ap.add_argument("--boot-seeds", default=None, help="bootstrap only these seed sets (default: all; one 1280-d "
                                                        "FD takes ~15 s on a busy CPU)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fd_noise.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = [s.strip() for s in args.settings.split(";") if s.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    if any(abs(a - b) < args.n for i, a in enumerate(seeds) for b in seeds[i + 1:]):
        raise SystemExit("seed sets overlap: first seeds must be at least --n apart")
    mdir = Path(args.model)
    ws = open_demo()
    net = backbone_net()
    real = real_features(ws, net, int(read_model_info(mdir)["resolution"]))
    cache = Path(os.environ.get("CEDM_HOME") or default_home()) / "bench" / "fd_noise"
    cache.mkdir(parents=True, exist_ok=True)
    fd, secs = {}, {}
    with InferenceEngine(device="cpu", threads=args.threads, dtype=args.dtype, max_batch=64) as eng:
        for seed in seeds:  # seed-major: every finished seed set gives a paired difference
            for setting in settings:
                f = cache / f"{mdir.name}_{args.dtype}_{setting.replace(',', '-')}_w{args.w}_s{args.steps}_n{args.n}_{seed}.npy"
                if not f.is_file():
                    t = time.perf_counter()
                    interval = "full" if setting == "full" else parse_interval(setting)
                    images, _ = eng.generate(mdir, args.n, guidance=args.w, steps=args.steps, sampler="dpmpp2m",
                                             seed=seed, guidance_interval=interval)
                    secs[(setting, seed)] = round(time.perf_counter() - t, 1)
                    np.save(f, extract(net, images))
                fd[(setting, seed)] = frechet_distance(np.load(f), real)
                print(f"{setting} seed {seed}: FD {fd[(setting, seed)]:.2f}", flush=True)
    rng = np.random.default_rng(0)
    boot = {}
    boot_seeds = seeds if args.boot_seeds is None else [int(s) for s in args.boot_seeds.split(",")]
    for (setting, seed) in fd:
        if args.boot and seed in boot_seeds:
            feats = np.load(cache / f"{mdir.name}_{args.dtype}_{setting.replace(',', '-')}_w{args.w}_s{args.steps}_n{args.n}_{seed}.npy")
            vals = [frechet_distance(feats[rng.integers(0, len(feats), len(feats))], real) for _ in range(args.boot)]
            boot[(setting, seed)] = float(np.std(vals, ddof=1))
    rows = [{"setting": s, "seed": sd, "n": args.n, "FD_EffNetLite0": round(v, 2),
             "bootstrap_sd": round(boot[(s, sd)], 2) if (s, sd) in boot else None, "sample_s": secs.get((s, sd))}
            for (s, sd), v in fd.items()]
    summary = {}
    for s in settings:
        v = [fd[(s, sd)] for sd in seeds if (s, sd) in fd]
        summary[s] = {"mean": round(float(np.mean(v)), 2), "sd_over_seed_sets": round(float(np.std(v, ddof=1)), 2)
                      if len(v) > 1 else None, "sets": len(v)}
        if s != "full":
            d = [fd[(s, sd)] - fd[("full", sd)] for sd in seeds if (s, sd) in fd and ("full", sd) in fd]
            summary[s]["paired_minus_full"] = [round(x, 2) for x in d]
            if len(d) > 1:
                summary[s]["paired_mean"] = round(float(np.mean(d)), 2)
                summary[s]["paired_sd"] = round(float(np.std(d, ddof=1)), 2)
    result = {"model": mdir.name, "w": args.w, "steps": args.steps, "dtype": args.dtype, "threads": args.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                         f"{torch.__version__}", "load_avg": os.getloadavg()[0], "rows": rows, "summary": summary}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n| setting | seed set | FD | bootstrap sd |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['seed']}..{r['seed'] + args.n - 1} | {r['FD_EffNetLite0']} | {r['bootstrap_sd']} |")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
