"""The one timer every benchmark uses: best wall time over repeats, GPU work included."""
import time

import torch


def timed(fn, reps=1):
    """(best seconds, last result) over ``reps`` runs; synchronises CUDA so queued GPU work is counted."""
    best, out = float("inf"), None
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out
