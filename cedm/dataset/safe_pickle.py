"""Read the pickled dicts of the CIFAR python tarballs without unpickling them.

``pickle.loads`` runs whatever callables a file names, so a user-supplied pickle must never reach it.
CIFAR batches only need a tiny subset of the pickle language: dicts, lists, tuples, str/bytes, ints and
numpy arrays. This is a small interpreter for exactly that subset, driven by ``pickletools.genops`` (which
only decodes opcodes and never calls anything). Globals are looked up in an allow-list of *data* builders
(numpy array and dtype reconstruction, latin-1 ``_codecs.encode``), each re-implemented here with checked
arguments; any other global (``os.system``, ``builtins.eval``, ...) or object-building opcode is refused
before anything is built. Only plain numeric dtypes are accepted, so no Python object can hide in an array.
"""
from __future__ import annotations

import io
import pickletools

import numpy as np

from cedm.errors import CedmError

_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "reconstruct",
    ("numpy.core.numeric", "_frombuffer"): "frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "frombuffer",
    ("numpy", "ndarray"): "ndarray",
    ("numpy", "dtype"): "dtype",
    ("_codecs", "encode"): "encode",
}
_DTYPES = {"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"}
_PY2_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING"}  # Python 2 str: raw bytes, like encoding='bytes'
_TEXT = {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_BYTES = {"BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
_INTS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_IGNORED = {"PROTO", "FRAME"}


class UnsafePickle(CedmError):
    """The pickle uses something outside the safe data-only subset."""


class _Global:
    def __init__(self, kind: str):
        self.kind = kind


class _Dtype:
    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


class _Array:
    """An ndarray under construction: ``_reconstruct`` makes it, ``BUILD`` fills it."""

    def __init__(self):
        self.value: np.ndarray | None = None


def _as_dtype(x) -> np.dtype:
    if isinstance(x, _Dtype):
        return x.dtype
    raise UnsafePickle("array without a plain numeric dtype")


def _call(fn: _Global, args: tuple):
    if not isinstance(args, tuple):
        raise UnsafePickle("malformed REDUCE arguments")
    if fn.kind == "encode":
        if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
            raise UnsafePickle("_codecs.encode is only accepted as (str, 'latin1')")
        return args[0].encode("latin-1")
    if fn.kind == "dtype":
        spec = args[0] if args else None
        spec = spec.decode("latin-1") if isinstance(spec, bytes) else spec
        if spec not in _DTYPES:
            raise UnsafePickle(f"dtype {spec!r} is not a plain numeric type")
        return _Dtype(np.dtype(spec))
    if fn.kind == "reconstruct":
        if not args or not isinstance(args[0], _Global) or args[0].kind != "ndarray":
            raise UnsafePickle("_reconstruct of something other than numpy.ndarray")
        return _Array()
    if fn.kind == "frombuffer":  # protocol 5: (buffer, dtype, shape, order)
        if len(args) != 4 or not isinstance(args[0], (bytes, bytearray)):
            raise UnsafePickle("malformed numpy _frombuffer call")
        return _from_buffer(args[0], _as_dtype(args[1]), args[2], args[3] == "F")
    raise UnsafePickle(f"{fn.kind} cannot be called")


def _from_buffer(raw, dtype: np.dtype, shape, fortran: bool) -> np.ndarray:
    if not isinstance(shape, tuple) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise UnsafePickle("malformed array shape")
    if isinstance(raw, str):  # Python 2 pickles of arrays carry their bytes as a latin-1 str
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, bytearray)):
        raise UnsafePickle("array data is not a byte string")
    count = int(np.prod(shape, dtype=np.int64))
    if count * dtype.itemsize != len(raw):
        raise UnsafePickle(f"array data has {len(raw)} bytes, shape {shape} needs {count * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _build(obj, state):
    if isinstance(obj, _Dtype):  # state: (version, byteorder, ...); only the byte order matters for numbers
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        order = order.decode() if isinstance(order, bytes) else order
        if order in ("<", ">") and obj.dtype.itemsize > 1:
            obj.dtype = obj.dtype.newbyteorder(order)
        return
    if isinstance(obj, _Array) and isinstance(state, tuple) and len(state) in (4, 5):
        shape, dtype, fortran, raw = state[-4:]
        obj.value = _from_buffer(raw, _as_dtype(dtype), shape, bool(fortran))
        return
    raise UnsafePickle("BUILD on an object that is not an array or dtype")


def _resolve(x):
    if isinstance(x, _Array):
        if x.value is None:
            raise UnsafePickle("array without data")
        return x.value
    if isinstance(x, (_Global, _Dtype)):
        raise UnsafePickle("a bare numpy global is not data")
    if isinstance(x, dict):
        return {_resolve(k): _resolve(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_resolve(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_resolve(v) for v in x)
    return x


def load_data_pickle(data: bytes):
    """Decode a data-only pickle (dicts, lists, str, bytes, numbers, numeric numpy arrays) safely."""
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark() -> list:
        if not marks:
            raise UnsafePickle("malformed pickle (no MARK)")
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(data)):
            name = op.name
            if name in _IGNORED:
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise UnsafePickle("malformed pickle (stack at STOP)")
                return _resolve(stack[0])
            if name in _PY2_STRINGS:
                stack.append(arg.encode("latin-1"))
            elif name in _TEXT or name in _BYTES or name in _INTS or name in ("BINFLOAT", "FLOAT"):
                stack.append(arg)
            elif name == "BYTEARRAY8":
                stack.append(bytearray(arg))
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                k = int(name[-1])
                items = tuple(stack[-k:])
                del stack[-k:]
                stack.append(items)
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "DICT":
                items = pop_mark()
                stack.append(dict(zip(items[::2], items[1::2])))
            elif name == "APPEND":
                v = stack.pop()
                stack[-1].append(v)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "SETITEM":
                v, k = stack.pop(), stack.pop()
                _setitem(stack[-1], k, v)
            elif name == "SETITEMS":
                items = pop_mark()
                for k, v in zip(items[::2], items[1::2]):
                    _setitem(stack[-1], k, v)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("GLOBAL", "STACK_GLOBAL"):
                if name == "GLOBAL":
                    module, _, attr = arg.partition(" ")
                else:
                    attr, module = stack.pop(), stack.pop()
                kind = _GLOBALS.get((module, attr))
                if kind is None:
                    raise UnsafePickle(f"refusing pickle that references {module}.{attr}")
                stack.append(_Global(kind))
            elif name == "REDUCE":
                args, fn = stack.pop(), stack.pop()
                if not isinstance(fn, _Global):
                    raise UnsafePickle("REDUCE on something that is not an allowed global")
                stack.append(_call(fn, args))
            elif name == "BUILD":
                state = stack.pop()
                _build(stack[-1], state)
            else:
                raise UnsafePickle(f"refusing pickle opcode {name}")
    except UnsafePickle:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, EOFError, UnicodeError) as e:
        raise UnsafePickle(f"malformed pickle ({type(e).__name__}: {e})") from None
    raise UnsafePickle("malformed pickle (no STOP)")


def _setitem(d, k, v):
    if not isinstance(d, dict) or not isinstance(k, (str, bytes, int)):
        raise UnsafePickle("SETITEM on something that is not a dict with a simple key")
    d[k] = v
