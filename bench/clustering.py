"""Clustering speed: our k-means and TEMI against plain references, on synthetic 768-d features.

    python bench/clustering.py [--quick] [--device cpu|cuda] [--sizes 3400 50000] [--clusters 100 500]
    python bench/clustering.py --curve --schedule cpu|paper [--cpu-heads 8] [--paper-heads 50] [--cs 20 40 50 60 80 100]
    python bench/clustering.py --curve --schedule cpu --cpu-heads 10 --cs 50 80   # also: best of 10 vs each pair
    python bench/clustering.py --compare [--cpu-heads 2]   # the two curves side by side: within 0.02? same C_max?

Features: N points around 100 random directions (so NMI to the generating blob is a sanity check).
- k-means: faiss spherical k-means (ours, nredo=1 here) vs scikit-learn KMeans (one init, same iterations).
- TEMI steps: all H heads batched (ours) vs the same heads run in a Python loop, same weights and batch;
  seconds per training step, then a full TEMI run when it fits the budget (otherwise an extrapolation of
  the paper schedule, 50 heads x 200 epochs, from the measured step time; marked as such).
Writes a table to stdout and bench/results/clustering.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cedm.clusters import metrics  # noqa: E402
from cedm.clusters.kmeans import kmeans  # noqa: E402
from cedm.clusters.temi import CPU_SCHEDULE, PAPER_SCHEDULE, MultiHead, mine_neighbors, temi, temi_loss  # noqa: E402
from timing import timed  # noqa: E402  (bench/timing.py; scripts run as python bench/<name>.py)


def synthetic(n, d=768, k=100, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    x = centers[y] / np.sqrt(d) + 0.05 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y




def step_time(heads, d, c, batch, device, looped: bool, steps=3):
    """Seconds per TEMI training step (teacher + student forward, loss, backward, AdamW)."""
    torch.manual_seed(0)
    student = MultiHead(heads, d, c).to(device)
    teacher = MultiHead(heads, d, c).to(device).requires_grad_(False)
    singles = [student.select(i).to(device) for i in range(heads)] if looped else None
    params = [p for s in singles for p in s.parameters()] if looped else list(student.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4)
    prior = torch.full((heads, c), 1.0 / c, device=device)
    x = torch.nn.functional.normalize(torch.randn(2 * batch, d, device=device), dim=-1)

    def step():
        with torch.no_grad():
            t_logits = teacher(x)
        if looped:  # reference: one head at a time
            s_logits = torch.cat([s(x) for s in singles])
        else:
            s_logits = student(x)
        loss = temi_loss(s_logits, t_logits, prior, 0.6, 0.1, 0.1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t, _ = timed(lambda: [step() for _ in range(steps)], 3)  # best of 3: the machine may be shared
    return t / steps


def kmeans_rows(x, y, n, c, quick, rows, results):
    """faiss spherical k-means vs scikit-learn KMeans (one init, same iterations)."""
    t_ours, km = timed(lambda: kmeans(x, c, nredo=1, niter=25))
    rec = {"n": n, "c": c, "what": "kmeans", "faiss_s": t_ours, "nmi_faiss": metrics.nmi(km.assignments, y)}
    if n <= 3400 or not quick:
        from sklearn.cluster import KMeans
        t_ref, sk = timed(lambda: KMeans(c, n_init=1, max_iter=25, tol=0, random_state=0).fit(x))
        rec.update(sklearn_s=t_ref, nmi_sklearn=metrics.nmi(sk.labels_, y))
        rows.append((n, c, "k-means: faiss vs sklearn", f"{t_ours:.2f} s", f"{t_ref:.2f} s",
                     f"{t_ref / t_ours:.1f}x"))
    else:
        rows.append((n, c, "k-means: faiss (sklearn skipped)", f"{t_ours:.2f} s", "", ""))
    results["runs"].append(rec)


def heads_study(info: dict, c: int) -> dict:
    """From one H-head TEMI run: every head's r_C and loss (the heads train alike, coupled only by the shared
    batches and the ensemble weight w, so they are close to H draws of one head's r_C), the r_C that choosing by
    loss among each disjoint pair of heads gives (what a 2-head run is) next to choosing among all H (what more
    heads buy), and the expected r_C of a k-head run (best_of_k)."""
    used, loss = info["head_n_used"], info["head_losses"]
    r = np.asarray(used, dtype=float) / c
    pairs = [min((i, i + 1), key=lambda h: loss[h]) for i in range(0, len(used) - 1, 2)]
    r_pairs = [round(used[h] / c, 4) for h in pairs]
    best = used[info["best_head"]] / c
    return {"head_r_c": [round(float(v), 4) for v in r], "head_losses": loss, "pairs_r_c": r_pairs,
            "pairs_max_abs_diff": round(max(abs(v - best) for v in r_pairs), 4),
            "head_r_c_mean": round(float(r.mean()), 4), "head_r_c_sd": round(float(r.std(ddof=1)), 4) if len(r) > 1 else None,
            "best_of_k": best_of_k(r, np.asarray(loss, dtype=float))}


def best_of_k(r: np.ndarray, loss: np.ndarray, ks=(2, 4, 8, 16), draws: int = 20000, seed: int = 0) -> dict:
    """{k: [mean, sd]} of the r_C a k-head run gives (it keeps its lowest-loss head), for k in ``ks`` and the run's
    own H: k heads drawn with replacement from this run's H heads (a bootstrap: the heads train alike, coupled only
    by the shared batches and the ensemble weight w, so they are close to H draws of one head's (loss, r_C); it
    cannot see what the number of heads does to w). For k = H the sd is this run's own run-to-run noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in sorted({*(k for k in ks if k < len(r)), len(r)}):
        pick = rng.integers(0, len(r), size=(draws, k))
        v = r[pick[np.arange(draws), np.argmin(loss[pick], axis=1)]]
        out[str(k)] = [round(float(v.mean()), 4), round(float(v.std()), 4)]
    return out


def earlier_curve(out: Path, settings: dict, seed: int) -> dict:
    """The curve record in ``out`` written earlier with the same settings and seed (else {})."""
    try:
        old = json.loads(out.read_text())
    except (OSError, ValueError):
        return {}
    return old if old.get("settings") == settings and (old.get("seed") or 0) == seed else {}


def curve(args):
    """r_C of TEMI on the demo's features at each C, for one schedule (cached in the demo's overlay, so the
    bound search and the app reuse every point). Writes bench/results/clustering_curve_<schedule>_<heads>h.json."""
    import time

    from cedm.clusters.bound import ALPHA, c_max_from_curve
    from cedm.clusters.labelings import cluster_workspace, find_clusters
    from cedm.clusters.temi import CPU_SCHEDULE, PAPER_SCHEDULE
    from cedm.workspace import open_workspace

    torch.set_num_threads(args.threads)
    ws = open_workspace(None, "demo")
    dev = args.device  # either schedule on either device: a GPU runs both for a same-device comparison
    kw = {**CPU_SCHEDULE, "heads": args.cpu_heads} if args.schedule == "cpu" else \
        {**PAPER_SCHEDULE, "heads": args.paper_heads}
    out = Path(args.out).with_name(f"clustering_curve_{args.schedule}_{kw['heads']}h"
                                   + (f"_seed{args.seed}" if args.seed else "") + ".json")
    rec = {"schedule": args.schedule, "settings": kw, "seed": args.seed, "backbone": args.backbone,
           "threads": args.threads, "device": dev,
           "machine": platform.processor() or platform.machine(), "points": []}
    earlier = earlier_curve(out, kw, args.seed)  # a rerun over cached points keeps its note and polled times
    before = {p["c"]: p for p in earlier.get("points", [])}
    if "note" in earlier:
        rec["note"] = earlier["note"]
    for c in args.cs:
        cached = find_clusters(ws, "temi", c, backbone=args.backbone, seed=args.seed, device=dev, **kw) is not None
        t0 = time.perf_counter()
        res = cluster_workspace(ws, "temi", c, backbone=args.backbone, seed=args.seed, device=dev, **kw)
        secs = res.info.get("seconds", time.perf_counter() - t0)
        cpu = res.info.get("cpu_seconds")  # the run's CPU time (over resumes too): fair on a shared machine
        rec["points"].append({"c": c, "r_c": res.utilization, "n_used": res.n_used, "seconds": secs,
                              "cpu_seconds": cpu, "cached": cached,
                              "ami_gt": metrics.ami(res.assignments, ws.ground_truth.labels)})
        if cached and cpu is None and c in before:  # trained before TEMI kept its CPU time: keep what was polled
            rec["points"][-1].update({k: before[c][k] for k in ("cpu_seconds", "cpu_seconds_source")
                                      if k in before[c]})
        print(f"C = {c:4d}  r_C = {res.utilization:.3f}  {secs:.0f} s" + (f", CPU {cpu:.0f} s" if cpu else "")
              + (" (cached)" if cached else ""), flush=True)
        if "head_n_used" in res.info:  # every head's own r_C (runs from before it was recorded have none)
            rec["points"][-1].update(heads_study(res.info, c))
            p = rec["points"][-1]
            if len(p["head_r_c"]) > 2:
                print(f"    {len(p['head_r_c'])} heads: r_C mean {p['head_r_c_mean']:.3f}, sd {p['head_r_c_sd']:.3f}; "
                      "a k-head run (bootstrap): " + ", ".join(f"{k}: {m:.3f} +- {sd:.3f}"
                                                              for k, (m, sd) in p["best_of_k"].items())
                      + f"; best of each pair: {p['pairs_r_c']}", flush=True)
        curve_pts = [(p["c"], p["r_c"]) for p in rec["points"]]
        rec["c_max_on_points"] = c_max_from_curve(curve_pts, ALPHA)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rec, indent=2) + "\n")
    print(f"wrote {out}")


def compare(args, tol: float = 0.02):
    """The CPU default against the paper schedule from the two --curve files: r_C at each C both have, the
    difference (within ``tol``?), the C_max the bound's rule gives on each curve's points, and the run times.
    Prints a markdown table; writes bench/results/clustering_curve_compare.json."""
    from cedm.clusters.bound import ALPHA, c_max_from_curve

    folder = Path(args.out).parent
    cpu_name = f"clustering_curve_cpu_{args.cpu_heads}h"
    files = {"cpu": folder / f"{cpu_name}.json", "paper": folder / f"clustering_curve_paper_{args.paper_heads}h.json"}
    recs = {k: json.loads(f.read_text()) for k, f in files.items() if f.is_file()}
    if len(recs) < 2:
        sys.exit(f"need both curves: {', '.join(str(f) for f in files.values())}")
    pts = {k: {p["c"]: p for p in r["points"]} for k, r in recs.items()}
    seeds = {}  # other seeds of the CPU default (--seed N): the run-to-run spread the 0.02 band sits in
    cpu_heads = {}  # every head of every CPU-default run at C (all seeds): one head's r_C, pooled
    for r in [recs["cpu"], *(json.loads(f.read_text()) for f in sorted(folder.glob(f"{cpu_name}_seed*.json")))]:
        if r is not recs["cpu"]:
            seeds[int(r["seed"])] = {p["c"]: p["r_c"] for p in r["points"]}
        for p in r["points"]:
            cpu_heads.setdefault(p["c"], []).extend(p.get("head_r_c", []))
    cs = sorted(set(pts["cpu"]) & set(pts["paper"]))
    rows = []
    for c in cs:
        a, b = pts["cpu"][c], pts["paper"][c]
        others = {s: v[c] for s, v in seeds.items() if c in v}
        every = [a["r_c"], *others.values()]  # the CPU default's runs at C: seed 0 and the other seeds
        lo, hi = min(every), max(every)
        rows.append({"c": c, "r_c_cpu": a["r_c"], "r_c_paper": b["r_c"], "diff": round(a["r_c"] - b["r_c"], 4),
                     "within": abs(a["r_c"] - b["r_c"]) <= tol + 1e-9, "r_c_cpu_other_seeds": others,
                     "r_c_cpu_mean": float(np.mean(every)), "r_c_cpu_range": [lo, hi], "cpu_runs": len(every),
                     "diff_mean": round(float(np.mean(every)) - b["r_c"], 4),
                     "paper_in_cpu_range": lo - tol - 1e-9 <= b["r_c"] <= hi + tol + 1e-9,
                     "cpu_seconds_cpu": a.get("cpu_seconds"), "cpu_seconds_paper": b.get("cpu_seconds"),
                     "seconds_cpu": a["seconds"], "seconds_paper": b["seconds"],
                     "ami_cpu": a.get("ami_gt"), "ami_paper": b.get("ami_gt")})
        if b.get("best_of_k"):  # the paper run's own heads: what a run of k of them gives, expected (bootstrap)
            h = cpu_heads.get(c, [])
            full = b["best_of_k"][str(len(b["head_r_c"]))][0]
            rows[-1].update({"cpu_heads_mean": float(np.mean(h)) if h else None,
                             "cpu_heads_sd": float(np.std(h, ddof=1)) if len(h) > 1 else None, "cpu_heads_n": len(h),
                             "paper_heads_mean": b["head_r_c_mean"], "paper_heads_sd": b["head_r_c_sd"],
                             "best_of_k": b["best_of_k"], "k_within": min(
                                 int(k) for k, (m, _) in b["best_of_k"].items() if abs(m - full) <= tol + 1e-9)})
    c_max = {k: c_max_from_curve([(c, pts[k][c]["r_c"]) for c in cs], ALPHA) for k in pts}
    for s, v in sorted(seeds.items()):  # each seed's own curve, where it has every C
        if all(c in v for c in cs):
            c_max[f"cpu_seed{s}"] = c_max_from_curve([(c, v[c]) for c in cs], ALPHA)
    if all(r["cpu_runs"] > 1 for r in rows):
        c_max["cpu_mean"] = c_max_from_curve([(r["c"], r["r_c_cpu_mean"]) for r in rows], ALPHA)
    expected = bool(rows) and all("best_of_k" in r for r in rows)
    ks = sorted(set.intersection(*(set(r["best_of_k"]) for r in rows)), key=int) if expected else []
    for k in ks:  # C_max on each expected curve: a k-head run, and the paper's own run expected
        c_max[f"expected_{k}_heads"] = c_max_from_curve([(r["c"], r["best_of_k"][k][0]) for r in rows], ALPHA)
    out = {"tol": tol, "alpha": ALPHA, "cs": cs, "rows": rows, "c_max_on_points": c_max,
           "all_within": all(r["within"] for r in rows), "same_c_max": c_max["cpu"] == c_max["paper"],
           "all_paper_in_cpu_range": all(r["paper_in_cpu_range"] for r in rows),
           "fewest_heads_within_at_every_c": max(r["k_within"] for r in rows) if expected else None,
           "settings": {k: r["settings"] for k, r in recs.items()}}

    def fmt(r, k):  # CPU time where the run recorded it, else its wall time (marked)
        cpu = r[f"cpu_seconds_{k}"]
        return f"{cpu / 60:.0f} min" if cpu else f"{r[f'seconds_{k}'] / 60:.0f} min wall"
    print(f"| C | r_C CPU default | r_C paper | CPU - paper | within {tol} | CPU default, other seeds "
          f"| CPU default, mean of seeds | mean - paper | paper within {tol} of the seeds' range "
          "| time, CPU default | time, paper |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        other = " / ".join(f"{v:.3f} (seed {k})" for k, v in sorted(r["r_c_cpu_other_seeds"].items())) or "-"
        print(f"| {r['c']} | {r['r_c_cpu']:.3f} | {r['r_c_paper']:.3f} | {r['diff']:+.3f} | {'yes' if r['within'] else 'no'} "
              f"| {other} | {r['r_c_cpu_mean']:.3f} ({r['cpu_runs']} runs) | {r['diff_mean']:+.3f} "
              f"| {'yes' if r['paper_in_cpu_range'] else 'no'} | {fmt(r, 'cpu')} | {fmt(r, 'paper')} |")
    if expected:
        print("\nThe paper run's own heads: they train alike (coupled by shared batches and the ensemble weight), "
              "so they are close to draws of one head's (loss, r_C); a k-head run keeps its lowest-loss head. "
              f"Expected r_C of a k-head run, bootstrapped from them (k = {ks[-1]}: the paper's own, +- its "
              "run-to-run sd):\n")
        print("| C | r_C paper (this run) | its heads: mean, sd | the CPU default's heads: mean, sd (n) | "
              + " | ".join(f"{k} heads" for k in ks) + f" | fewest heads within {tol} of {ks[-1]} |")
        print("|---|---|---|---|" + "---|" * len(ks) + "---|")
        for r in rows:
            ch = (f"{r['cpu_heads_mean']:.3f}, {r['cpu_heads_sd']:.3f} ({r['cpu_heads_n']})"
                  if r["cpu_heads_sd"] is not None else "-")
            bk = " | ".join(f"{r['best_of_k'][k][0]:.3f}" + (f" +- {r['best_of_k'][k][1]:.3f}" if k == ks[-1] else "")
                            for k in ks)
            print(f"| {r['c']} | {r['r_c_paper']:.3f} | {r['paper_heads_mean']:.3f}, {r['paper_heads_sd']:.3f} | {ch} "
                  f"| {bk} | {r['k_within']} |")
    print(f"C_max on these points (alpha {ALPHA}): " + ", ".join(f"{k} {v}" for k, v in c_max.items()))
    dest = folder / ("clustering_curve_compare.json" if args.cpu_heads == CPU_SCHEDULE["heads"]
                     else f"clustering_curve_compare_{args.cpu_heads}h.json")
    dest.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {dest}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--curve", action="store_true", help="r_C curve on the demo features for --schedule")
    ap.add_argument("--compare", action="store_true", help="the two --curve files side by side (issue 19's check)")
    ap.add_argument("--schedule", choices=["cpu", "paper"], default="cpu")
    ap.add_argument("--paper-heads", type=int, default=50, help="--schedule paper: heads (paper: 50)")
    ap.add_argument("--cpu-heads", type=int, default=CPU_SCHEDULE["heads"],
                    help=f"--schedule cpu and --compare: heads of the CPU recipe (default {CPU_SCHEDULE['heads']}, "
                         "the CPU default; 2 = the default before)")
    ap.add_argument("--cs", type=int, nargs="+", default=[20, 40, 50, 60, 80, 100])
    ap.add_argument("--seed", type=int, default=0, help="--curve: TEMI seed (initialisation and data order)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="reduced run (CPU here): fewer sizes and heads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--clusters", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--heads", type=int, default=None, help="heads for the step comparison (default 50, quick 8)")
    ap.add_argument("--full-temi-budget", type=float, default=None,
                    help="run full TEMI when estimated below this many seconds (default 420 on CUDA, 120 on CPU)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "clustering.json"))
    args = ap.parse_args()
    if args.compare:
        return compare(args)
    if args.curve:
        return curve(args)
    dev = torch.device(args.device)
    if args.full_temi_budget is None:
        args.full_temi_budget = 420.0 if dev.type == "cuda" else 120.0
    # k-means rows need faiss; a GPU box may lack it (bench/gpu.sh carries only diffusers): TEMI rows still run
    have_faiss = importlib.util.find_spec("faiss") is not None
    sizes = args.sizes or ([3400, 50000] if not args.quick else [3400, 50000])
    heads = args.heads or (8 if args.quick else 50)
    schedule = PAPER_SCHEDULE if dev.type == "cuda" else CPU_SCHEDULE
    rows, results = [], {"device": str(dev), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                         "processor": platform.processor(), "quick": args.quick, "runs": []}

    for n in sizes:
        x, y = synthetic(n)
        knn_how = "torch, exact" if dev.type == "cuda" else "faiss, exact"
        t_knn, nbrs = timed(lambda: mine_neighbors(x, 50, device=dev))
        results["runs"].append({"n": n, "what": f"knn m=50 ({knn_how})", "seconds": t_knn})
        rows.append((n, "-", f"kNN mining, m=50 ({knn_how})", f"{t_knn:.2f} s", "", ""))
        for c in args.clusters:
            if not have_faiss:
                rows.append((n, c, "k-means: skipped (faiss not installed)", "", "", ""))
            else:
                kmeans_rows(x, y, n, c, args.quick, rows, results)

            batch = schedule["batch_size"]
            t_b = step_time(heads, x.shape[1], c, batch, dev, looped=False)
            t_l = step_time(heads, x.shape[1], c, batch, dev, looped=True)
            results["runs"].append({"n": n, "c": c, "what": "temi step", "heads": heads, "batch": batch,
                                    "batched_s": t_b, "loop_s": t_l})
            rows.append((n, c, f"TEMI step, {heads} heads, batch {batch}: batched vs loop", f"{t_b * 1e3:.0f} ms",
                         f"{t_l * 1e3:.0f} ms", f"{t_l / t_b:.1f}x"))

            # paper schedule, extrapolated linearly in heads x batch from the measured batched step
            steps = max(1, n // PAPER_SCHEDULE["batch_size"])
            paper_est = (t_b / (heads * batch) * PAPER_SCHEDULE["heads"] * PAPER_SCHEDULE["batch_size"]
                         * steps * PAPER_SCHEDULE["epochs"]) if dev.type != "cuda" else None
            sched_steps = max(1, n // schedule["batch_size"]) * schedule["epochs"]
            est = t_b / heads * schedule["heads"] * sched_steps
            rec = {"n": n, "c": c, "what": "temi full", "schedule": schedule}
            if est <= args.full_temi_budget:
                t_full, res = timed(lambda: temi(x, c, neighbors=nbrs, device=dev))
                rec.update(seconds=t_full, nmi=metrics.nmi(res.assignments, y), utilization=res.utilization,
                           estimated=False)
                rows.append((n, c, f"TEMI full run ({schedule['heads']} heads, {schedule['epochs']} ep)",
                             f"{t_full:.1f} s", "", f"NMI {rec['nmi']:.2f}, r_C {res.utilization:.2f}"))
            else:
                rec.update(seconds=est, estimated=True)
                rows.append((n, c, f"TEMI full run ({schedule['heads']} heads, {schedule['epochs']} ep)",
                             f"~{est:.0f} s (est.)", "", ""))
            if paper_est is not None:
                rec["paper_schedule_estimate_s"] = paper_est
                rows.append((n, c, "TEMI paper schedule (50 heads, 200 ep), extrapolated", f"~{paper_est / 60:.0f} min",
                             "", ""))
            results["runs"].append(rec)
            print(*rows[-4:], sep="\n", flush=True)

    print(f"\ndevice {dev}, {torch.get_num_threads()} threads")
    print(f"{'N':>6} {'C':>4}  {'what':58} {'ours':>12} {'reference':>10} {'note'}")
    for r in rows:
        print(f"{r[0]:>6} {r[1]:>4}  {r[2]:58} {r[3]:>12} {r[4]:>10} {r[5]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
