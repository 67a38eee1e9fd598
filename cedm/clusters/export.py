"""Assignments and selections as files a spreadsheet opens: CSV with one row per image (source path,
cluster, confidence, and the cluster's name when it has one). Used by ``cedm cluster --export`` and the app."""
from __future__ import annotations

import csv
import io as _io

import numpy as np

from cedm import io
from cedm.errors import CedmError


def assignments_csv(ws, res, path, rows=None, names: dict[int, str] | None = None) -> int:
    """Write path,cluster,confidence[,name] for ``rows`` (default every image, in row order) of a
    ClusterResult to ``path`` (atomically). Returns the number of rows written."""
    rows = np.arange(ws.n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(rows) and (rows.min() < 0 or rows.max() >= ws.n):
        raise CedmError(f"rows must be in 0..{ws.n - 1}")
    buf = _io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "cluster", "confidence"] + (["name"] if names else []))
    for r in rows.tolist():
        c = int(res.assignments[r])
        w.writerow([ws.paths[r], c, f"{float(res.confidence[r]):.6f}"] + ([names.get(c, "")] if names else []))
    try:
        io.write_text(path, buf.getvalue())
    except OSError as e:
        raise CedmError(f"cannot write {path}: {e}") from e
    return len(rows)
