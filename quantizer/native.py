"""Fused CPU kernels for the quantizer forward rules: one pass over memory instead of several.

The PyTorch rules of :mod:`quantizer.functional` run as chains of elementwise kernels (pow2:
``abs``, ``clamp``, ``log2``, ``round``, ``threshold``, ``exp2``, ``copysign``), each a full
pass over the activation. ``native.c`` computes each rule in one pass, with the same IEEE
float32 operations in the same order, so the results are bit-equal (the tests compare every
rule with its PyTorch form, on every float32 of the pow2 range and on special values).

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``; about a second) into a private cache folder, ``$UNET_KERNEL_CACHE`` or
``~/.cache/unet-fixed-point`` (created ``0700``; a folder that another user owns or may write
is not used). Without a compiler, on other devices and dtypes, under tracing (ONNX export) or
with ``UNET_NATIVE_KERNELS=0`` in the environment, the PyTorch rules run instead: the values
are the same, only slower. :func:`status` says which and why.

Work is split between ``torch.get_num_threads()`` threads of the OpenMP runtime PyTorch
itself uses (the library asks for ``libgomp.so.1``, which the loader finds already loaded by
PyTorch); a compiler without OpenMP gives a library that runs on the calling thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("native.c")
#: Set to ``0`` in the environment to use the PyTorch rules only.
ENV_SWITCH = "UNET_NATIVE_KERNELS"
#: Folder of the compiled library (default ``~/.cache/unet-fixed-point``).
ENV_CACHE = "UNET_KERNEL_CACHE"
ABI = 6
#: ``-ffp-contract=off``: no fused multiply-add, every operation rounds as PyTorch's does.
#: ``-fno-math-errno`` lets ``rintf``/``floorf``/``truncf`` become single instructions and
#: ``-fno-trapping-math`` lets the loops vectorize (both concern error reporting, not values).
CFLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math")

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_reason = "not loaded yet"
_loaded = False
_enabled = True


# --- building and loading -----------------------------------------------------------------------


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _private_folder(path: Path) -> bool:
    """Whether ``path`` is a folder owned by this user that nobody else may write."""
    try:
        info = path.stat()
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    return not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def cache_folder() -> Path:
    """Where the compiled library lives: ``$UNET_KERNEL_CACHE`` or ``~/.cache/unet-fixed-point``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "unet-fixed-point"


def _build(compiler: str, flags: tuple[str, ...]) -> Path:
    """Compile ``native.c`` (once per source, compiler and flags) and return the library's path.

    A build that fails (a compiler without OpenMP, say) leaves a ``.failed`` note with its error,
    so later processes go straight to the next build instead of failing again."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, *flags, platform.machine(),
                                    sys.platform]).encode()).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".so"
    folder = cache_folder()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        pass
    if not _private_folder(folder):
        # never load a library from a folder someone else could have written to
        folder = Path(tempfile.mkdtemp(prefix="unet-kernels-"))
    target = folder / f"quantizer-kernels-{key}{suffix}"
    failed = folder / f"quantizer-kernels-{key}.failed"  # a build that failed is not tried again
    if target.is_file():
        return target
    if failed.is_file():
        raise RuntimeError(failed.read_text())
    handle, partial = tempfile.mkstemp(prefix=".building-", suffix=suffix, dir=folder)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, str(SOURCE), "-o", partial, "-lm"], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            message = f"{Path(compiler).name} failed: {result.stderr.strip()[-500:]}"
            failed.write_text(message)
            raise RuntimeError(message)
        os.replace(partial, target)  # atomic: a concurrent process sees the whole file or none
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, u32, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint32, ctypes.c_float, ctypes.c_int
    lib.unet_native_abi.restype = ctypes.c_int
    lib.unet_native_openmp.restype = ctypes.c_int
    signatures = {
        "unet_pow2": [p, p, i64, u32, u32, u32, p, u32, u32, u32, u32, i32],
        "unet_nearest": [p, p, i64, f32, f32, i32, i32],
        "unet_clamp_trunc": [p, p, i64, f32, i32],
        "unet_wrap": [p, p, i64, f32, f32, i32],
        "unet_int_minmax": [p, p, i64, f32, f32, f32, i32],
        "unet_binary": [p, p, p, i64, i32],
        "unet_masked_grad": [p, p, p, i64, i32],
        "unet_minmax": [p, i64, p, p, i32],
        "unet_bn_affine": [p, p, p, p, i64, f32, i32, p, p],
        "unet_relu_bn": [p, p, i64, i64, i64, p, p, i32, i32, p, p, p, i32],
        "unet_limbs_u8": [p, p, i32, p, p, p, i64, i64, f32, i64, i64, i64, i32],
        "unet_up2_limbs_u8": [p, p, i32, p, p, p, i64, i64, i64, i64, i64, i64, i64, i32],
        "unet_limbs_unit": [p, p, i32, i64, i64, p, ctypes.c_double, p, p, i32, i32, p, p, i32],
    }
    for name, argtypes in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = argtypes
        fn.restype = None
    lib.unet_minmax.restype = ctypes.c_int
    lib.unet_relu_bn.restype = ctypes.c_int
    lib.unet_limbs_unit.restype = ctypes.c_int


def _load() -> None:
    global _library, _reason, _loaded
    _loaded = True
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        _reason = f"off ({ENV_SWITCH}=0)"
        return
    compiler = _compiler()
    if compiler is None:
        _reason = "no C compiler found (set CC): the PyTorch rules run, with the same values"
        return
    errors = []
    for flags in (CFLAGS + ("-fopenmp",), CFLAGS):  # OpenMP where the compiler has it
        try:
            path = _build(compiler, flags)
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            if lib.unet_native_abi() != ABI:
                raise RuntimeError(f"{path} reports another interface version")
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            errors.append(str(error))
            continue
        threads = "OpenMP threads" if lib.unet_native_openmp() else "one thread"
        _library, _reason = lib, f"active, {threads} ({path})"
        return
    _reason = f"could not build the kernels ({errors[-1]}): the PyTorch rules run, with the same values"


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, building it on first use; None when the PyTorch rules run."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _load()
    return _library if _enabled else None


def status() -> str:
    """One line: whether the fused kernels run, with the library's path or the reason they do not."""
    library()
    return _reason if _enabled else "off (set_enabled(False))"


def set_enabled(enabled: bool) -> None:
    """Turn the kernels on or off for this process (off: the PyTorch rules; for tests and benchmarks)."""
    global _enabled
    _enabled = bool(enabled)


@contextlib.contextmanager
def enabled(value: bool) -> Iterator[None]:
    """``with enabled(False):`` runs the block with the PyTorch rules (restores the setting after)."""
    before = _enabled
    set_enabled(value)
    try:
        yield
    finally:
        set_enabled(before)


# --- when a tensor can take the kernels ---------------------------------------------------------


def _dense(x: Tensor) -> bool:
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def applies(x: Tensor) -> bool:
    """Whether the kernels can compute on ``x``: a dense (contiguous or channels_last) float32
    CPU tensor, outside tracing and compilation, with the kernels loaded."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and _dense(x) and not x.is_quantized
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and library() is not None)


def output_for(x: Tensor, inplace: bool) -> Tensor:
    """``x`` itself (in place) or a new tensor with ``x``'s layout."""
    return x if inplace else torch.empty_like(x, memory_format=torch.preserve_format)


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _mark_written(out: Tensor, inplace: bool) -> None:
    if inplace:
        # the write bypassed PyTorch: bump the version counter as an in-place op would, so autograd
        # still refuses a backward that needs the overwritten values
        torch.autograd.graph.increment_version(out)


# --- the rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pow2Plan:
    """Bit patterns for :func:`pow2` (see ``unet_pow2`` in native.c)."""

    lo: int
    hi: int
    first: int
    thresholds: np.ndarray  # uint32, one per biased exponent from ``first`` to hi's exponent
    t_min: int  # the smallest and largest threshold (hi's entry, 2^23, left out)
    t_max: int
    keep_from: int
    limit: int


def _f32_bits(value: float) -> int:
    return int(np.array(value, dtype=np.float32).view(np.uint32))


def log2_thresholds(first: int, last: int) -> np.ndarray:
    """For each biased exponent ``E`` in ``[first, last]``: the smallest mantissa ``T`` (of 2^23)
    with ``round(log2(2^(E-127) (1 + T 2^-23))) = E - 126`` in float32, ``round`` half to even.

    Computed from the float64 log2 rounded to float32 (the correctly rounded float32 log2);
    :func:`pow2_plan` checks the answer against ``torch.log2`` near every threshold.
    """
    mantissa = np.arange(3474675 - 512, 3474675 + 512, dtype=np.int64)
    out = np.empty(last - first + 1, dtype=np.uint32)
    for k, biased in enumerate(range(first, last + 1)):
        e = biased - 127
        y = (e + np.log2(1.0 + mantissa / 2.0**23)).astype(np.float32)
        up = np.round(y) == e + 1
        if not up[-1] or up[0] or not np.all(np.diff(up.astype(np.int8)) >= 0):
            raise RuntimeError(f"log2 rounding of exponent {e} has no single threshold near sqrt(2)")
        out[k] = mantissa[np.argmax(up)]
    return out


@lru_cache(maxsize=64)
def pow2_plan(limit: float, min_exponent: int) -> Pow2Plan | None:
    """The table that makes :func:`pow2` equal ``functional.fixed_point_pow2(x, i, f, ...,
    min_exponent)`` with ``limit = pow2_limit(i, f)``, or None where the kernel does not apply
    (``M = 0``, ``M < 2^min_exponent``, or ``min_exponent < -125``, where the PyTorch rule meets
    subnormals) or where ``torch.log2`` on this machine disagrees with the table anywhere near a
    threshold."""
    if limit == 0 or min_exponent < -125 or limit < 2.0**min_exponent:
        return None
    top = math.ceil(math.log2(limit))  # 2^top >= M: magnitudes above it round to at least 2^top
    if top > 127:
        return None
    first, last = min_exponent - 1 + 127, top + 127
    thresholds = log2_thresholds(first, last - 1)
    thresholds = np.append(thresholds, np.uint32(1 << 23))  # 2^top itself never rounds up
    if not _agrees_with_torch(first, thresholds[:-1]):
        return None
    inner = thresholds[:-1] if len(thresholds) > 1 else np.array([1 << 23], dtype=np.uint32)
    return Pow2Plan(lo=_f32_bits(2.0 ** (min_exponent - 1)), hi=_f32_bits(2.0**top), first=first,
                    thresholds=thresholds, t_min=int(inner.min()), t_max=int(inner.max()),
                    keep_from=_f32_bits(2.0**min_exponent), limit=_f32_bits(limit))


def _agrees_with_torch(first: int, thresholds: np.ndarray) -> bool:
    """Whether ``torch.round(torch.log2(a))`` moves to the upper exponent exactly at each
    threshold, on every mantissa within 2048 of it, for every exponent (one vectorized call)."""
    offsets = torch.arange(-2048, 2048, dtype=torch.int64)
    mantissa = torch.from_numpy(thresholds.astype(np.int64))[:, None] + offsets[None, :]
    exponents = torch.arange(first, first + len(thresholds), dtype=torch.int64)[:, None]
    bits = (exponents << 23) + mantissa
    values = bits.to(torch.int32).view(torch.float32).contiguous()
    rounded = torch.round(torch.log2(values))
    expected = (exponents - 127 + (offsets[None, :] >= 0)).to(torch.float32)
    return bool(torch.equal(rounded, expected))


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def minmax(x: Tensor) -> tuple[float, float] | None:
    """``(min(x), max(x))`` as Python floats (float32 values) in one pass, or None when ``x`` is
    empty or holds a NaN (the callers then take the PyTorch path, which propagates it)."""
    if x.numel() == 0:
        return None
    lo, hi = ctypes.c_float(), ctypes.c_float()
    if library().unet_minmax(x.data_ptr(), x.numel(), ctypes.byref(lo), ctypes.byref(hi), _threads()):
        return None
    return lo.value, hi.value


def pow2(x: Tensor, out: Tensor, plan: Pow2Plan) -> Tensor:
    """``out = fixed_point_pow2(x, ...)`` through the kernel (``out`` may be ``x``)."""
    library().unet_pow2(x.data_ptr(), out.data_ptr(), x.numel(), plan.lo, plan.hi, plan.first,
                        plan.thresholds.ctypes.data, plan.t_min, plan.t_max, plan.keep_from, plan.limit, _threads())
    _mark_written(out, out is x)
    return out


def nearest(x: Tensor, out: Tensor, scale: float, limit: float | None) -> Tensor:
    """``out = round(x scale) / scale``, clamped to ``[-limit, limit]`` unless ``limit`` is None."""
    clamp, bound = (0, 0.0) if limit is None else (1, limit)
    library().unet_nearest(x.data_ptr(), out.data_ptr(), x.numel(), scale, bound, clamp, _threads())
    _mark_written(out, out is x)
    return out


def wrap(x: Tensor, out: Tensor, scale: float, limit: float) -> Tensor:
    """``out = clamp(x - frac(x), -limit, limit) + round(frac(x) scale) / scale`` (the general
    nearest-wrap rule; ``frac(x) = x - trunc(x)``)."""
    library().unet_wrap(x.data_ptr(), out.data_ptr(), x.numel(), scale, limit, _threads())
    _mark_written(out, out is x)
    return out


def clamp_trunc(x: Tensor, out: Tensor, limit: float) -> Tensor:
    """``out = trunc(clamp(x, -limit, limit))``."""
    library().unet_clamp_trunc(x.data_ptr(), out.data_ptr(), x.numel(), limit, _threads())
    _mark_written(out, out is x)
    return out


def int_minmax(x: Tensor, out: Tensor, lo: float, step: float, half: float) -> Tensor:
    """``out = floor((x - lo) / step) - half`` (float32 operations)."""
    library().unet_int_minmax(x.data_ptr(), out.data_ptr(), x.numel(), lo, step, half, _threads())
    _mark_written(out, out is x)
    return out


def binary(x: Tensor, out: Tensor, inside: Tensor | None) -> Tensor:
    """``out = -1 where x < 0 else +1``; ``inside`` (bool, ``x``'s layout) gets ``[-1 <= x <= 1]``."""
    mask = None if inside is None else inside.data_ptr()
    library().unet_binary(x.data_ptr(), out.data_ptr(), mask, x.numel(), _threads())
    _mark_written(out, out is x)
    return out


def masked_grad(grad: Tensor, inside: Tensor) -> Tensor | None:
    """``where(inside, grad, 0)`` in one pass, or None when the kernel does not apply (layouts differ)."""
    if not (applies(grad) and inside.dtype == torch.bool and inside.device.type == "cpu"
            and grad.shape == inside.shape and grad.stride() == inside.stride() and _dense(inside)):
        return None
    out = torch.empty_like(grad, memory_format=torch.preserve_format)
    library().unet_masked_grad(grad.data_ptr(), inside.data_ptr(), out.data_ptr(), grad.numel(), _threads())
    return out


def bn_affine(mean: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
              fused: bool) -> tuple[Tensor, Tensor]:
    """Per-channel ``alpha = weight / sqrt(var + eps)`` and ``beta = bias - mean alpha`` (float32,
    one rounding per operation; ``fused``: the multiply-add rounds once), as PyTorch's
    evaluation-mode BatchNorm forms them. Inputs: contiguous float32 CPU vectors."""
    channels = mean.numel()
    alpha, beta = torch.empty(channels), torch.empty(channels)
    library().unet_bn_affine(mean.data_ptr(), var.data_ptr(), None if weight is None else weight.data_ptr(),
                             None if bias is None else bias.data_ptr(), channels, eps, int(fused),
                             alpha.data_ptr(), beta.data_ptr())
    return alpha, beta


class PostOp(ctypes.Structure):
    """A quantizer rule that :func:`relu_bn` applies to its output in cache (``struct unet_post``)."""

    _fields_ = [("kind", ctypes.c_int32), ("lo", ctypes.c_uint32), ("hi", ctypes.c_uint32),
                ("first", ctypes.c_uint32), ("t_min", ctypes.c_uint32), ("t_max", ctypes.c_uint32),
                ("keep_from", ctypes.c_uint32), ("limit", ctypes.c_uint32), ("threshold", ctypes.c_void_p),
                ("scale", ctypes.c_float), ("bound", ctypes.c_float), ("code_scale", ctypes.c_float)]

    POW2, BINARY, NEAREST_CLAMP, CLAMP_TRUNC = 1, 2, 3, 4


def post_pow2(plan: Pow2Plan) -> PostOp:
    """:func:`pow2` with ``plan`` as a post-op (which keeps ``plan`` alive: it points into its table)."""
    post = PostOp(PostOp.POW2, plan.lo, plan.hi, plan.first, plan.t_min, plan.t_max, plan.keep_from, plan.limit,
                  plan.thresholds.ctypes.data, 0.0, 0.0)
    post.plan = plan
    return post


def post_binary() -> PostOp:
    """:func:`binary` (no mask) as a post-op."""
    return PostOp(kind=PostOp.BINARY)


def post_nearest_clamp(scale: float, limit: float) -> PostOp:
    """:func:`nearest` with a clamp as a post-op."""
    return PostOp(kind=PostOp.NEAREST_CLAMP, scale=scale, bound=limit)


def post_clamp_trunc(limit: float) -> PostOp:
    """:func:`clamp_trunc` as a post-op."""
    return PostOp(kind=PostOp.CLAMP_TRUNC, bound=limit)


def relu_bn(x: Tensor, out: Tensor, alpha: Tensor, beta: Tensor, relu: bool, fused: bool,
            want_range: bool, post: PostOp | None = None) -> tuple[float, float] | None:
    """``out = relu(x) alpha_c + beta_c`` (``x`` if not ``relu``; ``fused``: one rounding) for a
    4-D ``x`` in channels_last or contiguous layout, ``out`` of the same layout, then ``post``'s
    rule on ``out`` (in cache, piece by piece). With ``want_range``, returns ``(min(out),
    max(out))`` of the result (None when it holds a NaN), else None."""
    n, c, h, w = x.shape
    outer, inner = (n * h * w, 1) if not x.is_contiguous() else (n, h * w)
    lo, hi = ctypes.c_float(), ctypes.c_float()
    nan = library().unet_relu_bn(x.data_ptr(), out.data_ptr(), outer, c, inner, alpha.data_ptr(), beta.data_ptr(),
                                 int(relu), int(fused), ctypes.byref(lo) if want_range else None,
                                 ctypes.byref(hi) if want_range else None,
                                 None if post is None else ctypes.byref(post), _threads())
    if not want_range or nan or x.numel() == 0:
        return None
    return lo.value, hi.value


def _limb_arrays(outs: list[Tensor], shifts: list[int], bits: list[int | None], zero_points: list[int]) -> tuple:
    """The C arrays of :func:`limbs_u8` / :func:`up2_limbs_u8`: output pointers, shifts, masks
    (-1 for the top limb), zero points."""
    count = len(outs)
    return ((ctypes.c_void_p * count)(*[t.data_ptr() for t in outs]), count, (ctypes.c_int * count)(*shifts),
            (ctypes.c_int * count)(*[-1 if k is None else (1 << k) - 1 for k in bits]),
            (ctypes.c_int * count)(*zero_points))


def limbs_u8(x: Tensor, outs: list[Tensor], shifts: list[int], bits: list[int | None], zero_points: list[int],
             mult: float = 1.0, offset: int = 0, second: int | None = None) -> None:
    """Bytes of the limbs of the integer codes ``v = x mult`` (``x`` float32, channels_last (B, C,
    H, W); ``mult`` a power of two, every ``v`` an integer below 2^24), in one pass: limb ``i =
    floor(v / 2^shifts[i])``, reduced mod ``2^bits[i]`` (None: the top limb, not reduced). ``outs[i]`` (uint8,
    channels_last (B, K, H, W)) gets ``limb + zero_points[i]`` in channels ``offset ..``, and
    with ``second`` in channels ``second ..`` too. The caller guarantees every byte lies in
    0..255."""
    b, c, h, w = x.shape
    library().unet_limbs_u8(x.data_ptr(), *_limb_arrays(outs, shifts, bits, zero_points), b * h * w, c, mult,
                            outs[0].shape[1], offset, -1 if second is None else second, _threads())


def up2_limbs_u8(x: Tensor, outs: list[Tensor], shifts: list[int], bits: list[int | None], zero_points: list[int],
                 offset: int = 0, second: int | None = None) -> None:
    """:func:`limbs_u8` of ``16 x`` the bilinear x2 upsampling of the integer codes ``x`` (float32,
    channels_last (B, C, h, w), below 2^20): the codes of ``unet.integer.kernels.upsample2_codes``,
    formed in int32 as the bytes are written (``outs[i]``: (B, K, 2 h, 2 w))."""
    b, c, h, w = x.shape
    library().unet_up2_limbs_u8(x.data_ptr(), *_limb_arrays(outs, shifts, bits, zero_points), b, h, w, c,
                                outs[0].shape[1], offset, -1 if second is None else second, _threads())


def limbs_affine(parts: list[Tensor], shifts: list[int], bias: Tensor, scale: float, out: Tensor) -> bool:
    """``out = (acc * scale + bias_c).float()`` in float64, ``acc = sum_i parts[i] 2^shifts[i]``, for
    float32 integer parts and ``out`` all of one shape in channels_last (or NHWC) memory, ``bias``
    a contiguous float64 vector over the channels. False (``out`` unusable) when some part is
    2^24 or more in magnitude, so possibly rounded; else True."""
    return limbs_unit(parts, shifts, bias, scale, None, None, False, False, None, out)


def limbs_unit(parts: list[Tensor], shifts: list[int], bias: Tensor, scale: float, alpha: Tensor | None,
               beta: Tensor | None, relu: bool, fused: bool, post: PostOp | None, out: Tensor) -> bool:
    """An integer unit after its convolution in one pass: ``y`` as :func:`limbs_affine` forms it,
    then (with ``alpha``) ``relu(y) alpha_c + beta_c`` as :func:`relu_bn` (channels_last), then
    ``post``'s rule (and code scale). False (``out`` unusable) when some part is 2^24 or more in
    magnitude."""
    channels = bias.numel()
    pixels = out.numel() // channels if channels else 0
    pointers = (ctypes.c_void_p * len(parts))(*[t.data_ptr() for t in parts])
    offsets = (ctypes.c_int * len(parts))(*shifts)
    wide = library().unet_limbs_unit(pointers, offsets, len(parts), pixels, channels, bias.data_ptr(), scale,
                                     None if alpha is None else alpha.data_ptr(),
                                     None if beta is None else beta.data_ptr(), int(relu), int(fused),
                                     None if post is None else ctypes.byref(post), out.data_ptr(), _threads())
    return not wide
