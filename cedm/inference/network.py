"""The network as the inference engine calls it: its dtype (bf16 where the hardware computes it natively),
a TorchScript-frozen copy on CPU, ``torch.compile`` with power-of-two batch buckets on CUDA, CPU calls of at
most ``CPU_CHUNK_ROWS`` rows, and large CPU calls split over ``CPU_STREAMS`` parallel streams (bench/sampling.py
measured each lever)."""
from __future__ import annotations

import contextlib
import copy
import logging

import torch

from cedm.device import cpu_has_native_bf16
from cedm.errors import CedmError

log = logging.getLogger(__name__)

CPU_CHUNK_ROWS = 32  # rows per network call on CPU: a 128-row fp32 call falls out of cache (1.2-1.5x slower per row)
# A 32x32 UNet's convolutions are too small for oneDNN to keep two cores busy inside one call (2 threads: 1.55-1.65x
# one thread on 16-32 rows), while two independent calls, one core each, scale 1.65-2.0x. So on CPU a call of at
# least 2 * CPU_STREAM_MIN_ROWS rows is cut in CPU_STREAMS parts run at once, each with threads / CPU_STREAMS
# torch threads (measured 1.22-1.26x at 32-64 rows on 2 cores, 0.85-0.9x at 2-4 rows: hence the minimum).
CPU_STREAMS = 2
CPU_STREAM_MIN_ROWS = 16


def stream_pool(threads: int):
    """The worker threads of the CPU streams (None below 2 threads): each runs torch with threads / CPU_STREAMS
    intra-op threads (torch's thread count is per thread under OpenMP)."""
    if threads < CPU_STREAMS:
        return None
    from concurrent.futures import ThreadPoolExecutor

    per = max(1, threads // CPU_STREAMS)
    return ThreadPoolExecutor(CPU_STREAMS, thread_name_prefix="cedm-stream",
                              initializer=lambda: torch.set_num_threads(per))


class _UNetCall(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, labels):
        return self.unet(x, t, class_labels=labels, return_dict=False)[0]


class _FrozenUNet(torch.nn.Module):
    """A TorchScript-frozen UNet that CEDM.forward can call like the diffusers one."""

    def __init__(self, frozen, config, dtype):
        super().__init__()
        self.frozen, self.config, self._dtype = frozen, config, dtype
        self.class_embedding = torch.nn.Identity()  # CEDM.forward parks its (training-only) extra embedding here

    @property
    def dtype(self):
        return self._dtype

    def forward(self, x, t, class_labels=None, return_dict=False):
        return (self.frozen(x, t, class_labels),)


def frozen_model(model, dtype=None):
    """A copy of a CEDM whose UNet is traced and frozen by TorchScript (weights folded in, the Python module
    overhead gone: 1.3-1.4x faster per call at small batches on CPU; bf16 also in oneDNN's layout), with its weights in
    ``dtype`` (bf16: no per-call weight casts, unlike autocast). Returns None when tracing fails or the frozen
    network disagrees with the eager one."""
    import warnings

    net_dtype = dtype or torch.float32
    R = model.resolution
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")
            unet = copy.deepcopy(model.unet).to(net_dtype).eval()
            x = torch.randn(3, int(model.unet.config.in_channels), R, R,
                            generator=torch.Generator().manual_seed(0)).to(net_dtype)
            t = torch.linspace(-1.5, 1.0, 3).to(net_dtype)
            labels = torch.tensor([0, model.uncond_index, 0], dtype=torch.long)
            frozen = torch.jit.freeze(torch.jit.trace(_UNetCall(unet).eval(), (x, t, labels), check_trace=False))
            if net_dtype != torch.float32:
                # oneDNN's own layout pays in bf16 (5 % at 2-32 rows); in fp32 its conversions around every
                # GroupNorm cost more than they save (freeze alone: 4-12 % faster at 2-32 rows, bench/README.md)
                frozen = torch.jit.optimize_for_inference(frozen)
            want = unet(x, t, class_labels=labels, return_dict=False)[0].float()
            got = frozen(x[:2], t[:2], labels[:2]).float()  # another batch size than traced
            tol = 1e-3 if net_dtype == torch.float32 else 0.1
            if not torch.allclose(got, want[:2], atol=tol * max(1.0, float(want.abs().max()))):
                log.warning("frozen network disagrees with the eager one; using eager")
                return None
    except Exception as e:  # an unusual network TorchScript cannot trace: eager still works
        log.warning("could not freeze the network (%s); using eager", e)
        return None
    m = copy.copy(model)  # shares everything but the UNet
    m._modules = dict(model._modules)
    m._modules["unet"] = _FrozenUNet(frozen, unet.config, net_dtype)
    return m


# --- the network with the engine's speed settings ---------------------------------------------------
class FastNet:
    """``model(x, sigma, labels)`` with the engine's speed settings, plus an evaluation counter.

    CUDA: autocast, channels-last, ``torch.compile`` (CUDA graphs) on power-of-two buckets. CPU: a
    TorchScript-frozen copy of the UNet in the engine's dtype (bf16 weights instead of autocast), calls of at
    most CPU_CHUNK_ROWS rows, and large calls split over the engine's ``pool`` of CPU streams when no gradient
    is taken (profiled in bench/sampling.py and bench/README.md)."""

    def __init__(self, model, device: torch.device, dtype, compile_mode, max_rows: int, freeze: bool | None = None,
                 pool=None):
        self.model, self.device, self.dtype = model, device, dtype
        self.n_conditions, self.uncond_index, self.info = model.n_conditions, model.uncond_index, model.info
        self.channels_last = device.type == "cuda"  # cuDNN convs are fastest in NHWC; on CPU it did not pay
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.compiled = bool(compile_mode)
        if self.compiled:
            # one graph per bucket shape, and every loaded model shares the UNet's forward code object: above
            # dynamo's recompile limit (8) torch silently falls back to eager for new shapes
            import torch._dynamo.config as dynamo_config
            limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
            setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 64))
        self.fn = torch.compile(model, dynamic=False, mode=compile_mode) if self.compiled else model
        self.autocast = dtype is not None
        self.chunk = None
        if device.type == "cpu" and not self.compiled:
            self.chunk = CPU_CHUNK_ROWS
            frozen = frozen_model(model, dtype) if (freeze is None or freeze) else None
            if frozen is not None:
                self.fn, self.autocast = frozen, False  # the frozen weights are already in the dtype
        self.frozen = self.fn is not model and not self.compiled
        self.pool = pool if self.chunk is not None else None
        self.max_rows = int(max_rows)
        self.evaluations = 0

    def bucket(self, n: int) -> int:
        """Compiled shapes: batch padded to the next power of two (at most log2(max_rows) + 1 compiles)."""
        return min(1 << max(n - 1, 0).bit_length(), max(self.max_rows, n))

    def __call__(self, x, sigma, labels):
        self.evaluations += 1
        n = x.shape[0]
        if self.pool is not None and n >= CPU_STREAMS * CPU_STREAM_MIN_ROWS and not torch.is_grad_enabled():
            inference = torch.is_inference_mode_enabled()  # (thread-local: the streams take the caller's mode)
            futures = [self.pool.submit(self._stream, inference, xs, sigma, ls)  # sigma: one level for the call
                       for xs, ls in zip(x.tensor_split(CPU_STREAMS), labels.tensor_split(CPU_STREAMS))]
            return torch.cat([f.result() for f in futures])
        return self._chunks(x, sigma, labels)

    def _stream(self, inference: bool, x, sigma, labels):
        with torch.inference_mode() if inference else torch.no_grad():
            return self._chunks(x, sigma, labels)

    def _chunks(self, x, sigma, labels):
        n = x.shape[0]
        if self.chunk is not None and n > self.chunk:
            return torch.cat([self._call(x[i:i + self.chunk], sigma, labels[i:i + self.chunk])
                              for i in range(0, n, self.chunk)])
        return self._call(x, sigma, labels)

    def _call(self, x, sigma, labels):
        n = x.shape[0]
        if self.compiled:
            pad = self.bucket(n) - n
            if pad:
                x = torch.cat([x, x[:1].expand(pad, -1, -1, -1)])
                labels = torch.cat([labels, labels[:1].expand(pad)])
            if self.device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fn, autocast = self.fn, self.autocast
        if self.frozen and torch.is_grad_enabled():  # a guidance kind that differentiates through the network
            fn, autocast = self.model, self.dtype is not None  # (the frozen graph is inference-only)
        ctx = torch.autocast(self.device.type, dtype=self.dtype) if autocast else contextlib.nullcontext()
        with ctx:
            out = fn(x, sigma, labels)
        # a CUDA graph's output buffer is overwritten by its next replay: keep our own copy
        return out[:n].float().clone() if self.compiled else out.float()



def resolve_dtype(dtype, device: torch.device):
    if dtype in (None, "auto"):
        # bf16 autocast wherever the hardware computes it natively: CUDA, and CPUs with AMX/AVX512-BF16 (there
        # 1.6-2.5x faster than float32 at 16+ images, bench/sampling.py). Outputs move by <= ~0.03 of [-1, 1]
        # (a few uint8 levels); dtype='fp32' gives float-exact agreement with the reference.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    names = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if isinstance(dtype, str):
        if dtype not in names:
            raise CedmError(f"unknown dtype {dtype!r}: use auto, fp32, bf16 or fp16")
        return names[dtype]
    return None if dtype == torch.float32 else dtype


def resolve_compile(compile, device: torch.device):
    """None: compile on CUDA only (on a 2-core CPU, inductor takes minutes per shape); True: the default mode
    for the device ('reduce-overhead' = CUDA graphs on CUDA); a string: that torch.compile mode."""
    if compile is None:
        compile = device.type == "cuda"
    if compile is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    return compile or None
