"""The inference engine: the one owner of loaded C-EDM models and of the device.

Every sampling request (app, ``cedm sample``, benchmarks) is a :class:`Ticket` from ``engine.submit``. One
worker thread serves a bounded queue: requests that share (model, sampler, steps, guidance, churn) are merged
into one batch of up to ``max_batch`` images. Image i of a request with seed S starts from seed S + i alone
(cedm.sampling.generate), so a merged batch gives each caller what it would have got alone (exactly up to float
rounding in float32; in bf16 up to a few uint8 levels, as the batch shape changes the rounding).

Fast path per network evaluation: inference mode, classifier-free guidance as ONE call of batch 2B
(cedm.sampling.guidance), and the network in the engine's dtype and compiled form (cedm.inference.network).
``cedm.inference.reference.reference_sample`` is the plain reference it must agree with: two network calls per
evaluation, float32, no inference mode.

Failures stay local: a request whose preparation fails (bad cluster id, a model that cannot guide) or whose
progress callback raises fails alone; a merged batch that fails is retried request by request, so only the
bad one fails; the worker never dies. A cancelled request's rows stop being computed at the next step, and a
batch with nothing left to compute stops.
"""
from __future__ import annotations

import atexit
import collections
import logging
import threading
import weakref
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from cedm.cache import LRU
from cedm.errors import CedmError
from cedm.inference.network import FastNet, resolve_compile, resolve_dtype, stream_pool
from cedm.model.edm import read_model_info
from cedm.sampling.generate import choose_conditions, to_uint8
from cedm.sampling.core import (StackedRandomGenerator, check_request, labels_tensor, make_settings,
                                sample_batch)
from cedm.sampling.guidance import guided_denoiser

log = logging.getLogger(__name__)

# Interactive CPU use: DPM-Solver++(2M) at 12 evaluations (16 guided 32x32 images from the small preset: 4.6-6 s
# on one core of a busy 2-core machine, bench/sampling.py). The paper's setting: EDM Heun, 18 steps = 35 evaluations.
INTERACTIVE_DEFAULTS = {"sampler": "dpmpp2m", "steps": 12}
PAPER_DEFAULTS = {"sampler": "heun", "steps": 18}


class EngineBusy(CedmError):
    """The queue is full: busy, try again."""


class Cancelled(CedmError):
    """The request was cancelled before it finished."""


class EngineClosed(CedmError):
    """The engine was closed."""


class _Stop(Exception):
    """Every row of the running batch was cancelled or failed: leave the sampling loop."""


def model_key(model_dir, ema: bool = True) -> tuple:
    """Cache key of a model folder: its resolved path, the mtime of its cedm.json (a retrained model is a new
    key) and which weights (EMA or raw)."""
    p = Path(model_dir).expanduser()
    try:
        mtime = (p / "cedm.json").stat().st_mtime_ns
    except OSError:
        raise CedmError(f"{model_dir} is not a cedm model folder (no cedm.json)") from None
    return (str(p.resolve()), mtime, bool(ema))


def derived_seed(image_seed: int, candidate: int) -> int:
    """Seed of best-of candidate j of an image: the image's own seed for j = 0, else a hash of (seed, j)."""
    if candidate == 0:
        return int(image_seed)
    return int(np.random.SeedSequence([int(image_seed), int(candidate)]).generate_state(1, np.uint64)[0] >> 1)


class _Loaded:
    def __init__(self, key, model, net):
        self.key, self.model, self.net = key, model, net


# --- requests and tickets ----------------------------------------------------------------------------
class Ticket:
    """A handle on a submitted request: ``result(timeout)``, ``cancel()``, ``done()``."""

    def __init__(self, engine: "InferenceEngine", owner: str | None = None):
        self._engine = engine
        self.owner = owner  # who asked (e.g. an app session): engine.cancel_owner stops all of theirs
        self._event = threading.Event()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._value = self._error = None

    def done(self) -> bool:
        return self._event.is_set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> bool:
        """Ask to stop: the request's rows are dropped at the next step; ``result()`` then raises Cancelled.
        Returns False when it had already finished."""
        if self.done():
            return False
        self._cancel.set()
        self._engine._cancel_waiting(self)
        return True

    def result(self, timeout: float | None = None):
        """(uint8 images (n, R, R, 3), records) as cedm.sampling.generate returns; raises the request's error."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"the sampling request did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value

    def _finish(self, value=None, error: BaseException | None = None) -> bool:
        with self._lock:
            if self._event.is_set():
                return False
            self._value, self._error = value, error
            self._event.set()
            return True


class _Request:
    def __init__(self, key, batch_key, model_dir, n, clusters, from_q, uncond, settings, seed, best_of, progress,
                 output, ticket):
        self.key, self.batch_key, self.model_dir = key, batch_key, model_dir
        self.n, self.clusters, self.from_q, self.uncond = n, clusters, from_q, uncond
        self.settings, self.steps, self.seed = settings, settings.steps, seed
        self.best_of, self.progress, self.output, self.ticket = best_of, progress, output, ticket
        self.n_rows = n * best_of
        self.prepared = False
        self.conditions: list = []      # per row
        self.seeds: list[int] = []      # per row
        self.out: torch.Tensor | None = None
        self.next_row = 0               # rows handed to a batch so far
        self.rows_done = 0
        self.row_steps = 0              # sum over rows of finished sampler steps (for progress)
        self.last_step = 0


# --- the engine ----------------------------------------------------------------------------------------
class InferenceEngine:
    """Owns loaded models (bounded LRU cache), the device and a worker thread that batches requests.

    ``device``: 'auto' (CUDA when present) / 'cpu' / 'cuda[:N]'. ``threads``: torch CPU threads (default: the
    cores this process may use). ``max_batch``: images per network batch (guidance doubles the rows of the
    call). ``max_queue``: unfinished requests beyond which ``submit`` raises :class:`EngineBusy`.
    ``max_models``: models kept loaded. ``compile``: see resolve_compile. ``dtype``: autocast dtype ('auto'
    = bf16 where the hardware has it natively (CUDA, AMX CPUs; CEDM_CPU_BF16=0 turns the CPU's off), else
    float32; 'fp32' for results float-close to :func:`cedm.inference.reference_sample` and identical whatever a request is
    batched with). ``warmup``: model folders to load (and compile) in the background
    at start. ``freeze``: on CPU, run a TorchScript-frozen copy of the network (default; False: eager).
    ``streams``: on CPU with 2+ threads, split large network calls over parallel streams (cedm.inference.network).
    """

    def __init__(self, device=None, threads: int | None = None, max_batch: int = 64, max_queue: int = 64,
                 max_models: int = 2, compile=None, dtype=None, max_request_images: int = 4096,
                 warmup: Sequence = (), freeze: bool | None = None, streams: bool = True):
        from cedm.device import resolve_device

        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if threads is not None and int(threads) < 1:
            raise CedmError(f"threads must be at least 1, got {threads}")
        if min(int(max_batch), int(max_queue), int(max_models), int(max_request_images)) < 1:
            raise CedmError("max_batch, max_queue, max_models and max_request_images must be at least 1")
        if threads is None and self.device.type == "cpu":
            threads = min(torch.get_num_threads(), len(getattr(__import__("os"), "sched_getaffinity",
                                                                 lambda _: range(torch.get_num_threads()))(0)))
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()
        self._streams = stream_pool(self.threads) if streams and self.device.type == "cpu" else None
        self.dtype = resolve_dtype(dtype, self.device)
        self.compile_mode = resolve_compile(compile, self.device)
        self.freeze = freeze
        self.max_batch, self.max_queue, self.max_models = int(max_batch), int(max_queue), int(max_models)
        self.max_request_images = int(max_request_images)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        self.stats = collections.Counter()
        self._models, self._scorers, self._infos = LRU(self.max_models), LRU(self.max_models), LRU(64)
        self._cond = threading.Condition()
        self._pending: list[_Request] = []   # requests with rows not yet handed to a batch, oldest first
        self._jobs: collections.deque = collections.deque()
        self._open = 0                        # unfinished requests (what max_queue bounds)
        self._tickets: weakref.WeakSet = weakref.WeakSet()  # submitted tickets (finished ones fall out)
        self._closed = False
        self._worker = threading.Thread(target=self._serve_forever, name="cedm-inference", daemon=True)
        self._worker.start()
        for d in warmup:
            self.warmup(d)

    # --- public API ---------------------------------------------------------------------------------
    def submit(self, model_dir, n: int = 1, clusters: int | Sequence[int] | None = None, from_q: bool = True,
               uncond: bool = False, guidance=1.0, steps: int | None = None, sampler: str | None = None,
               seed: int = 0, churn: float = 0.0, best_of: int = 1,
               progress: Callable[[int, int], None] | None = None, ema: bool = True,
               output: str = "uint8", guidance_interval=None, owner: str | None = None) -> Ticket:
        """Queue a sampling request; returns at once with a :class:`Ticket`.

        Arguments as cedm.sampling.generate (``steps``/``sampler`` default to INTERACTIVE_DEFAULTS; validated
        by cedm.sampling.core.make_settings / check_request, the model-specific guidance check in the worker).
        ``best_of=k``: draw k candidates per image (candidate 0 with the image's seed, the others with seeds
        derived from it) and keep the one the condition labeling's assigner gives the highest probability of
        the image's cluster; records then carry ``confidence`` and ``candidate``. ``progress(step, steps)``
        is called as the request's images advance. ``output='float'`` returns float32 (n, 3, R, R) in [-1, 1]
        instead of uint8 images. ``owner``: a tag (e.g. the app session) that ``cancel_owner`` cancels by.
        Raises :class:`EngineBusy` when ``max_queue`` requests are unfinished.
        """
        n, seed, best_of = check_request(n, seed, best_of, self.max_request_images)
        if output not in ("uint8", "float"):
            raise CedmError(f"output must be 'uint8' or 'float', got {output!r}")
        key = model_key(model_dir, ema)
        info = self.model_info(model_dir, ema)
        settings = make_settings(sampler or INTERACTIVE_DEFAULTS["sampler"],
                                 INTERACTIVE_DEFAULTS["steps"] if steps is None else steps, guidance,
                                 guidance_interval, churn, info)
        conditional = not uncond and int(info.get("n_conditions", 0)) > 0
        batch_key = (key, settings.normalized(conditional))
        ticket = Ticket(self, owner)
        req = _Request(key, batch_key, Path(model_dir), n, clusters, from_q, uncond, settings, seed, best_of,
                       progress, output, ticket)
        with self._cond:
            if self._closed:
                raise EngineClosed("the inference engine is closed")
            if self._open >= self.max_queue:
                self.stats["busy"] += 1
                raise EngineBusy(f"busy, try again: {self._open} sampling requests are waiting "
                                 f"(limit {self.max_queue})")
            self._open += 1
            self._tickets.add(ticket)
            self.stats["requests"] += 1
            self._pending.append(req)
            self._cond.notify_all()
        return ticket

    def cancel_owner(self, owner: str) -> int:
        """Cancel every unfinished request submitted with ``owner`` (a closed tab, a client's cancel); running
        rows stop at their next sampler step. Returns how many were cancelled."""
        with self._cond:
            mine = [t for t in list(self._tickets) if t.owner == owner and not t.done()]
        return sum(bool(t.cancel()) for t in mine)

    def generate(self, model_dir, n: int = 1, timeout: float | None = None, **kw):
        """Blocking ``submit(...).result()``: (uint8 images (n, R, R, 3), records) like sampling.generate."""
        ticket = self.submit(model_dir, n, **kw)
        try:
            return ticket.result(timeout)
        except BaseException:
            ticket.cancel()  # e.g. Ctrl-C or a timeout: stop the work
            raise

    def confidence(self, model_dir, images, ema: bool = True):
        """(condition ids, maximum softmax probability) of images (uint8 (N, R, R, 3)) under the labeling the
        model was conditioned on, or None for an unconditional model. See cedm.inference.confidence: TEMI head
        softmax; for k-means a softmax over cosine similarity to the centroids at temperature 0.1."""
        scorer = self.scorer(model_dir, ema)
        if scorer is None:
            return None
        return scorer.score(np.asarray(images))

    def scorer(self, model_dir, ema: bool = True):
        """The resident backbone + cluster assigner of a model's condition labeling (None if unconditional)."""
        from cedm.inference.confidence import load_scorer

        key = model_key(model_dir, ema)
        info = self.model_info(model_dir, ema)
        if int(info.get("n_conditions", 0)) == 0:
            return None
        return self._scorers.get(key, lambda: load_scorer(model_dir, info, self.device))

    def model_info(self, model_dir, ema: bool = True) -> dict:
        """cedm.json of a model folder (cached by path + mtime)."""
        return self._infos.get(model_key(model_dir, ema), lambda: read_model_info(model_dir))

    def model(self, model_dir, ema: bool = True):
        """The loaded CEDM (from the cache; loaded on first use)."""
        return self._load(model_key(model_dir, ema), Path(model_dir)).model

    def cached_models(self) -> list[tuple]:
        return self._models.keys()

    def warmup(self, model_dir, batch_sizes: Sequence[int] | None = None, ema: bool = True) -> Ticket:
        """Load a model in the worker thread and, when compiled, run every bucket shape once."""
        key, ticket = model_key(model_dir, ema), Ticket(self)

        def job():
            lm = self._load(key, Path(model_dir))
            if lm.net.compiled:
                sizes = batch_sizes or sorted({lm.net.bucket(b) for b in range(1, self.max_batch + 1)})
                R = lm.model.resolution
                for b in sizes:
                    for rows in {b, min(2 * b, lm.net.bucket(2 * b))}:  # guided calls double the rows
                        x = torch.randn(rows, 3, R, R, device=self.device)
                        with torch.inference_mode():
                            lm.net(x, torch.tensor(1.0, dtype=torch.float64, device=self.device),
                                   torch.zeros(rows, dtype=torch.long, device=self.device))
            return key

        with self._cond:
            self._jobs.append((job, ticket))
            self._cond.notify_all()
        return ticket

    def close(self, timeout: float = 30.0) -> None:
        """Fail every waiting request (EngineClosed), stop the running batch at its next step, end the worker."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            waiting, self._pending = self._pending, []
            jobs, self._jobs = list(self._jobs), collections.deque()
            self._cond.notify_all()
        for r in waiting:
            r.ticket._cancel.set()
            self._settle(r, error=EngineClosed("the inference engine was closed"))
        for _, t in jobs:
            t._finish(error=EngineClosed("the inference engine was closed"))
        self._worker.join(timeout)
        if self._streams is not None:
            self._streams.shutdown(wait=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- models ---------------------------------------------------------------------------------------
    def _load(self, key: tuple, model_dir: Path) -> _Loaded:
        from cedm.model.edm import load_model

        def make():
            model = load_model(model_dir, self.device, ema=key[2])
            self.stats["model_loads"] += 1
            return _Loaded(key, model, FastNet(model, self.device, self.dtype, self.compile_mode,
                                               2 * self.max_batch, self.freeze, self._streams))

        return self._models.get(key, make)

    # --- bookkeeping ----------------------------------------------------------------------------------
    def _settle(self, req: _Request, value=None, error: BaseException | None = None) -> None:
        """Finish a request once: result or error, out of the queue, its slot freed."""
        with self._cond:
            if req in self._pending:
                self._pending.remove(req)
            if req.ticket._finish(value, error):
                self._tickets.discard(req.ticket)
                self._open -= 1
                self.stats["failed" if error is not None and not isinstance(error, Cancelled) else
                           "cancelled" if error is not None else "completed"] += 1

    def _cancel_waiting(self, ticket: Ticket) -> None:
        """A request none of whose rows has started is settled at once (frees its queue slot)."""
        with self._cond:
            req = next((r for r in self._pending if r.ticket is ticket and r.next_row == 0), None)
        if req is not None:
            self._settle(req, error=Cancelled("sampling request cancelled"))

    # --- the worker -----------------------------------------------------------------------------------
    def _serve_forever(self) -> None:
        torch.set_num_threads(self.threads)  # thread-local in some OpenMP runtimes
        while True:
            with self._cond:
                while not self._pending and not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                job = self._jobs.popleft() if self._jobs else None
                group = None if job else [r for r in self._pending if r.batch_key == self._pending[0].batch_key]
            try:
                if job is not None:
                    fn, ticket = job
                    try:
                        ticket._finish(fn())
                    except Exception as e:
                        ticket._finish(error=e)
                else:
                    self._serve(group)
            except Exception as e:  # a bug of ours must not end the worker: fail what was in hand
                log.exception("inference worker error")
                for r in group or []:
                    self._settle(r, error=e)

    def _serve(self, group: list[_Request]) -> None:
        head = group[0]
        try:
            lm = self._load(head.key, head.model_dir)
        except Exception as e:  # they all share this model
            for r in group:
                self._settle(r, error=e)
            return
        for r in group:
            if not r.prepared:
                try:
                    self._prepare(r, lm)
                except Exception as e:
                    self._settle(r, error=e)
        slices, rows = [], 0
        with self._cond:
            for r in group:
                if r.ticket.done() or rows >= self.max_batch:
                    continue
                take = min(r.n_rows - r.next_row, self.max_batch - rows)
                slices.append((r, r.next_row, r.next_row + take))
                r.next_row += take
                rows += take
                if r.next_row == r.n_rows and r in self._pending:
                    self._pending.remove(r)
        if not slices:
            return
        saved = {id(r): r.row_steps for r, _, _ in slices}
        try:
            self._run_batch(lm, slices)
        except Exception as e:
            if len(slices) == 1:
                self._settle(slices[0][0], error=e)
                return
            self.stats["retries"] += 1  # find the culprit: each request alone
            for s in slices:
                r = s[0]
                if r.ticket.done():
                    continue
                r.row_steps = saved[id(r)]
                try:
                    self._run_batch(lm, [s])
                except Exception as e2:
                    self._settle(r, error=e2)

    def _prepare(self, r: _Request, lm: _Loaded) -> None:
        model = lm.model
        g = r.settings.guidance
        prepare = getattr(g.spec, "prepare", None)  # a kind that chooses its own per-image labels (probe)
        if prepare is not None:
            conds = prepare(model, g, r.n, r.clusters, r.from_q, r.seed)
        else:
            conds = choose_conditions(model, r.n, r.clusters, r.from_q, r.uncond, r.seed)
        conditional = conds[0] is not None
        r.settings.for_model(model, conditional)  # refuses guidance this model cannot do
        if r.best_of > 1 and not conditional:
            raise CedmError("best-of sampling needs conditioned images: it keeps the candidate most confidently "
                            "in the image's cluster")
        r.conditions = [c for c in conds for _ in range(r.best_of)]
        r.seeds = [derived_seed(r.seed + i, j) for i in range(r.n) for j in range(r.best_of)]
        r.out = torch.empty((r.n_rows, 3, model.resolution, model.resolution), dtype=torch.float32)
        r.prepared = True

    def _run_batch(self, lm: _Loaded, slices: list[tuple]) -> None:
        model, net, dev = lm.model, lm.net, self.device
        settings = slices[0][0].batch_key[1]
        R = model.resolution
        owners, seeds, conds, start = [], [], [], 0
        for r, a, b in slices:
            owners.append([r, start, start + b - a, a, b])
            seeds += r.seeds[a:b]
            conds += r.conditions[a:b]
            start += b - a
        labels = labels_tensor(model, conds, dev)
        active = {id(o[0]) for o in owners if not o[0].ticket.done()}
        state = {"idx": None, "denoise": None}  # idx None: every row is live
        stats = self.stats

        def refresh():
            live = [torch.arange(o[1], o[2]) for o in owners if id(o[0]) in active]
            if not live:
                raise _Stop
            idx = torch.cat(live).to(dev)
            state["idx"] = None if len(idx) == len(labels) else idx
            state["denoise"] = guided_denoiser(net, labels if state["idx"] is None else labels[idx],
                                               settings.guidance)

        def denoise(x, sigma):
            stats["evaluations"] += 1
            if state["idx"] is None:
                return state["denoise"](x, sigma)
            out = x.clone()  # dropped rows: D = x, so they stand still and cost nothing
            out[state["idx"]] = state["denoise"](x[state["idx"]], sigma)
            return out

        def drop(r, error):
            active.discard(id(r))
            self._settle(r, error=error)

        def callback(i, n, _x, _d):
            changed = False
            for r, s, e, _, _ in owners:
                if id(r) not in active:
                    continue
                if r.ticket.cancel_requested or r.ticket.done():
                    drop(r, Cancelled("sampling request cancelled"))
                    changed = True
                    continue
                r.row_steps += e - s
                step = r.row_steps // r.n_rows
                if r.progress is not None and step != r.last_step:
                    r.last_step = step
                    try:
                        r.progress(step, r.steps)
                    except Exception as err:  # the caller's callback failed: that request alone fails
                        drop(r, err)
                        changed = True
            if changed:
                refresh()

        for o in owners:  # cancelled while waiting for this batch
            if o[0].ticket.cancel_requested and id(o[0]) in active:
                drop(o[0], Cancelled("sampling request cancelled"))
        try:
            refresh()
            x = sample_batch(denoise, StackedRandomGenerator(seeds), (3, R, R), settings, callback, dev)
        except _Stop:
            return
        stats["batches"] += 1
        stats["rows"] += len(labels)
        x = x.float().cpu()
        for r, s, e, a, b in owners:
            if id(r) not in active:
                continue
            r.out[a:b] = x[s:e]
            r.rows_done += b - a
            if r.rows_done == r.n_rows:
                try:
                    self._settle(r, value=self._finish_request(r))
                except Exception as err:
                    self._settle(r, error=err)

    def _finish_request(self, r: _Request):
        k, n = r.best_of, r.n
        x, rows, extra = r.out, np.arange(n) * k, [{} for _ in range(n)]
        g = r.settings.guidance
        select, describe = getattr(g.spec, "select", None), getattr(g.spec, "describe", None)
        model = self._load(r.key, r.model_dir).model if select is not None or describe is not None else None
        if k > 1 and select is not None:  # the kind scores its own rows (probe: its probability of the class)
            p_want = np.asarray(select(model, g, x, r.conditions)).reshape(n, k)
        elif k > 1:  # keep the candidate most probably in its image's cluster
            scorer = self.scorer(r.model_dir, r.key[2])
            if scorer is None:
                raise CedmError("best-of sampling needs a conditional model")
            p = scorer.proba(to_uint8(x))
            want = np.asarray(r.conditions, dtype=np.int64)
            p_want = p[np.arange(len(want)), want].reshape(n, k)
        if k > 1:
            best = p_want.argmax(1)
            rows = rows + best
            extra = [{"best_of": k, "candidate": int(best[i]), "confidence": float(p_want[i, best[i]])}
                     for i in range(n)]
            x = x[torch.from_numpy(rows)]
        grec = g.record() if r.conditions[0] is not None else {"guidance": None}
        records = [{"index": i, "seed": r.seeds[rows[i]], "condition": r.conditions[rows[i]], **grec,
                    **r.settings.record(), **extra[i],
                    **(describe(model, g, r.conditions[rows[i]]) if describe is not None else {})}
                   for i in range(n)]
        if r.progress is not None and r.last_step != r.steps:
            r.progress(r.steps, r.steps)
        return (x.clone() if r.output == "float" else to_uint8(x)), records


# --- the process-wide engine ----------------------------------------------------------------------------
_ENGINE: InferenceEngine | None = None
_ENGINE_LOCK = threading.Lock()


def get_engine(**kw) -> InferenceEngine:
    """The process-wide engine (created on first use with ``kw``; later calls return the same one)."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE._closed:
            _ENGINE = InferenceEngine(**kw)
            atexit.register(_ENGINE.close)
        return _ENGINE
