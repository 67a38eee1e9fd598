"""The network as the inference engine calls it: its dtype (bf16 where the hardware computes it natively),
a TorchScript-frozen copy on CPU, ``torch.compile`` with power-of-two batch buckets on CUDA, and CPU calls of at
most ``CPU_CHUNK_ROWS`` rows (bench/sampling.py measured each lever)."""
from __future__ import annotations

import contextlib
import copy
import logging

import torch

from cedm.device import cpu_has_native_bf16
from cedm.errors import CedmError

log = logging.getLogger(__name__)

CPU_CHUNK_ROWS = 32  # rows per network call on CPU: a 128-row fp32 call falls out of cache (1.2-1.5x slower per row)


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
    """A copy of a CEDM whose UNet is traced and frozen by TorchScript (weights folded in, oneDNN-ready, the
    Python module overhead gone: 1.3-1.4x faster per call at small batches on CPU), with its weights in
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
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
                _UNetCall(unet).eval(), (x, t, labels), check_trace=False)))
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
    TorchScript-frozen copy of the UNet in the engine's dtype (bf16 weights instead of autocast), and calls of
    at most CPU_CHUNK_ROWS rows (profiled in bench/sampling.py and bench/README.md)."""

    def __init__(self, model, device: torch.device, dtype, compile_mode, max_rows: int, freeze: bool | None = None):
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
        self.max_rows = int(max_rows)
        self.evaluations = 0

    def bucket(self, n: int) -> int:
        """Compiled shapes: batch padded to the next power of two (at most log2(max_rows) + 1 compiles)."""
        return min(1 << max(n - 1, 0).bit_length(), max(self.max_rows, n))

    def __call__(self, x, sigma, labels):
        self.evaluations += 1
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
