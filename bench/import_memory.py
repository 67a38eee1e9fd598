"""Import of a 70k-image IDX file (MNIST-sized): time and peak heap memory, cedm vs a plain in-memory loop.

cedm decodes one image at a time straight into the workspace's memory-mapped array, so its heap peak
should stay near the size of the source data; the plain reference (decode into a list, stack, save) holds
the output about twice. Heap is measured with tracemalloc (numpy reports its buffers there; memory maps
are file pages, not heap). Writes bench/results/import_memory.json.

    python bench/import_memory.py [--n 70000] [--resolution 32]
"""
import argparse
import gzip
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

CEDM = """
import sys, time, tracemalloc
sys.path.insert(0, {root!r})
from cedm.dataset.importers import import_dataset
tracemalloc.start()
t = time.perf_counter()
ws = import_dataset({src!r}, home={home!r}, name="bench", resolution={res}, progress=lambda *a: None)
print(time.perf_counter() - t, tracemalloc.get_traced_memory()[1], ws.n)
"""

PLAIN = """
import gzip, sys, time, tracemalloc
import numpy as np
from PIL import Image
tracemalloc.start()
t = time.perf_counter()
raw = gzip.decompress(open({src!r}, "rb").read())
n, h, w = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
x = np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w)
rows = [np.asarray(Image.fromarray(a).convert("RGB").resize(({res}, {res}), Image.LANCZOS)) for a in x]
out = np.stack(rows)
np.save({home!r} + "/plain.npy", out)
print(time.perf_counter() - t, tracemalloc.get_traced_memory()[1], len(out))
"""


def run(code: str) -> tuple[float, int, int]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=70000)
    ap.add_argument("--resolution", type=int, default=32)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        x = (rng.random((args.n, 28, 28)) < 0.2).astype(np.uint8) * 255  # MNIST-like: mostly black strokes
        src = f"{tmp}/train-images-idx3-ubyte.gz"
        with open(src, "wb") as f:
            f.write(gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", *x.shape) + x.tobytes(), 1))
        source_mb = x.nbytes / 2**20
        output_mb = args.n * args.resolution**2 * 3 / 2**20
        cedm = run(CEDM.format(root=str(ROOT), src=src, home=f"{tmp}/home", res=args.resolution))
        plain = run(PLAIN.format(src=src, home=tmp, res=args.resolution))
    rows = {"cedm import": cedm, "plain loop (reference)": plain}
    print(f"{args.n} images 28x28 -> {args.resolution}x{args.resolution}; source {source_mb:.0f} MB, output {output_mb:.0f} MB")
    print(f"{'path':<24} {'seconds':>8} {'heap peak MB':>13} {'peak / output':>14}")
    result = {"n": args.n, "resolution": args.resolution, "source_mb": source_mb, "output_mb": output_mb, "rows": {}}
    for name, (sec, peak, n) in rows.items():
        assert n == args.n
        print(f"{name:<24} {sec:>8.1f} {peak / 2**20:>13.0f} {peak / 2**20 / output_mb:>14.2f}")
        result["rows"][name] = {"seconds": sec, "heap_peak_mb": peak / 2**20}
    out = ROOT / "bench" / "results" / "import_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
