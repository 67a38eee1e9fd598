"""Abandoned requests must not slow the next visitor: a 1-image /generate after 4 clients cancelled long
requests mid-generation, against its idle time, through the real app over HTTP (gradio_client).

*cedm*: the app as served (a client's ``job.cancel()`` reaches the engine: CancelWatcher -> cancel_owner; a
closed tab does the same through ``Blocks.unload``). *gradio only*: the same app launched without the
CancelWatcher, i.e. what gradio's cancel alone does (the event is dropped, its worker thread and the engine's
rows run on: the behaviour before issue 13). Target: cedm's request within 3x its idle time.

    python bench/cancel.py [--model demo-kmeans20] [--abandoned 4] [--n 8] [--steps 100]
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in (("GRADIO_ANALYTICS_ENABLED", "False"), ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_TELEMETRY", "1")):
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from timing import timed  # noqa: E402  (bench/timing.py; scripts run as python bench/<name>.py)


def one_image(c, model, seed):
    return c.predict(model=model, condition="a cluster", cluster=0, guidance=2.0, steps=12, sampler="dpmpp2m",
                     seed=seed, n=1, workspace="demo", api_name="/generate")


def run(args, watch_cancel: bool) -> dict:
    import socket

    from gradio_client import Client

    from cedm.inference import get_engine
    from cedm.ui.app import build_app, launch_options

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app(tempfile.mkdtemp(prefix="cedm-bench-cancel-"), public=False)
    opts = launch_options(demo)
    if not watch_cancel:
        opts.pop("app_kwargs")
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **opts)
    try:
        url = demo.local_url
        engine = get_engine()
        c = Client(url, verbose=False, analytics_enabled=False)
        one_image(c, args.model, 0)  # model loaded, caches warm
        idle, _ = timed(lambda: one_image(c, args.model, 1), reps=3)
        clients = [Client(url, verbose=False, analytics_enabled=False) for _ in range(args.abandoned)]
        jobs = [k.submit(model=args.model, condition="a cluster", cluster=0, guidance=2.0, steps=args.steps,
                         sampler="dpmpp2m", seed=10 + i, n=args.n, workspace="demo", api_name="/generate")
                for i, k in enumerate(clients)]
        end = time.monotonic() + 600
        while time.monotonic() < end and sum(1 for t in list(engine._tickets) if t.owner and not t.done()) < len(jobs):
            time.sleep(0.05)
        time.sleep(1.0)  # mid-generation: the batch is running
        for j in jobs:
            j.cancel()
        after, _ = timed(lambda: one_image(c, args.model, 2))
        drained = time.monotonic() + 900
        while time.monotonic() < drained and any(not t.done() for t in list(engine._tickets)):
            time.sleep(0.1)
        return {"idle_s": idle, "after_abandoned_s": after, "ratio": after / idle}
    finally:
        demo.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="demo-kmeans20")
    p.add_argument("--abandoned", type=int, default=4)
    p.add_argument("--n", type=int, default=8, help="images per abandoned request")
    p.add_argument("--steps", type=int, default=100, help="sampler steps per abandoned request")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = {"cedm": run(args, True), "gradio only": run(args, False)}
    print(f"\n{args.abandoned} clients cancel a {args.n}-image, {args.steps}-step request each, mid-generation; "
          f"then one 1-image request (12 steps)")
    print("| app | idle s | after abandoned s | ratio |\n|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['idle_s']:.2f} | {r['after_abandoned_s']:.2f} | {r['ratio']:.1f}x |")
    out = {"machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                       "load": os.getloadavg(), "torch": torch.__version__, "threads": args.threads},
           "settings": vars(args), "rows": rows, "target": "cedm ratio <= 3"}
    path = Path(__file__).resolve().parent / "results" / "cancel.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
