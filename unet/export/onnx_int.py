"""Integer ONNX export: the integer engine's arithmetic as standard ONNX operators (opset 13).

``python -m unet.export RUN --format onnx-int`` writes a graph that onnxruntime runs to the very
activation codes of :class:`unet.integer.IntegerUNet` (its threshold tables, its integer kernels):

* **First block** (float weights) and its activation quantizer: the float graph of
  :mod:`unet.export.onnx` (same emitters), then the codes ``trunc(q 2^k)`` (``Mul`` by the exact
  power-of-two inverse scale, ``Cast`` to int32, which truncates).
* **Quantized convolutions** (:func:`integer_conv`), on NHWC codes: the int32 codes offset by
  the layer's code bound ``M`` (non-negative), padded with ``M`` (``Pad``: a zero code), split
  into uint8 limbs (shifts on uint32) and laid out as im2col matrices (one ``Slice`` per window,
  one ``Concat`` on the channel axis); the weights into signed 7-bit limbs, int8 (9 C, O) matrices; one
  ``MatMulInteger`` (uint8 x int8 -> int32: onnxruntime's VNNI / AMX GEMM; its ``ConvInteger``
  took about ten times longer) per (activation limb, weight limb) pair, combined as
  ``sum P_ij 256^i 128^j - M sum(w_o)``: in int32 where the export proves that no partial sum
  can overflow, else in int64 (pow2's x16 upsampled codes in the decoder's first units); a layer
  past 2^63 is refused.
* **Requantization** (bias, activation, BatchNorm, quantizer): the static per-channel threshold
  table of :class:`~unet.integer.thresholds.ThresholdRequantizer` applied to the oriented
  accumulator (``Mul`` by -1 on channels with a negative BatchNorm gain): ``code = v[#{k: t_k <=
  o acc}]``, the engine's ``searchsorted`` lookup. Long tables (Q6.0: 127 thresholds) by a
  branchless binary search (``Gather`` of a threshold, ``GreaterOrEqual``, add), started from a
  float32 linear guess where the export proves that the guess bounds the count to a small window
  (:func:`linear_guess`: evenly spaced thresholds, 1-2 rounds instead of 7), else from 0; short
  tables (BNN) by one broadcast ``GreaterOrEqual`` against all thresholds, times each passed
  threshold's code step, and ``ReduceSum``: ``v_0 + sum_{t_k <= o acc} (v_k - v_{k-1})`` (the
  thresholds are sorted, so the passed ones are a prefix).
* **Max pooling**: ``Max`` of the four stride-2 slices of the int32 NHWC codes; **bilinear x2**:
  ``upsample2_codes`` per axis (``c[j-1] + 3 c[j]``, ``3 c[j] + c[j+1]``, edges repeated, by
  ``Slice``/``Concat``/``Reshape``): codes at scale ``s / 16``, the skip multiplied by 16.
* **Head**: float (the last codes back to NCHW, ``Cast`` times the scale, the float ``Conv``,
  ``Sigmoid``).

Only formats whose threshold tables are static can be written: INT (the range is each batch's
min and max), Ternary (float activations) and wide formats whose tables the engine builds per
batch (Q8.8, ...) are refused with the reason. The float parts sum in onnxruntime's
order: the first block's codes can differ from PyTorch's where a value lies within float
rounding of a quantizer step (:func:`first_block_flips` counts them; docs/engines.md), and the
head's probabilities in the last bits; the integer part is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor

from ..errors import UserError
from ..integer import IntegerUNet
from ..integer.engine import UP_GAIN, IntegerUnit
from ..integer.fast import limb_count, split_limbs
from ..integer.thresholds import SENTINEL
from ..model import Stage, UNet, walk
from .onnx import (
    INPUT,
    OPSET,
    OUTPUT,
    Graph,
    check_input_hw,
    conv_nodes,
    cpu_session,
    make_model,
    model_metadata,
    onnx_activation,
    onnx_weight,
    rename_output,
    save_model,
    unit_nodes,
)

#: Graph input of the codes variant (``start="codes"``): the first block's output codes.
CODES_INPUT = "enc1_codes"
#: Tables of at most this many thresholds per channel are applied by one broadcast comparison
#: (a (B, H, W, C, K) intermediate); longer ones by a binary search (:func:`_search_codes`).
SUM_LIMIT = 3
INT32_LIMIT = 2**31
#: Integers of magnitude below this are exact in float32.
FLOAT32_EXACT = 2**24
#: A layer's requantization table (:func:`lookup_table`) takes at most this many bytes; a longer
#: one gives way to the binary search over the thresholds.
LUT_LIMIT_BYTES = 2**23


def _int_const(g: Graph, value: np.ndarray | int, dtype: type, hint: str = "k") -> str:
    """An integer initializer of numpy ``dtype`` holding ``value``."""
    name = g.name(hint)
    g.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    return name


def _i32(g: Graph, value: np.ndarray | int, hint: str = "k") -> str:
    return _int_const(g, value, np.int32, hint)


def _i64(g: Graph, value: list[int] | int, hint: str = "k") -> str:
    return _int_const(g, value, np.int64, hint)


def _slice(g: Graph, x: str, axis: int, start: int, end: int, step: int = 1) -> str:
    return g.op("Slice", [x, _i64(g, [start]), _i64(g, [end]), _i64(g, [axis]), _i64(g, [step])], "slice")


# --- integer layers ------------------------------------------------------------------------------


def _activation_limbs(g: Graph, a: str, count: int) -> list[str]:
    """Uint8 limbs of non-negative int32 codes ``a``: ``a = sum_i l_i 256^i``, by shifts on uint32
    (``l_i = r_i - 256 r_{i+1}``, ``r_{i+1} = r_i >> 8``: every ``Cast`` to uint8 is in range)."""
    if count == 1:
        return [g.op("Cast", [a], "limb8", to=TensorProto.UINT8)]
    eight = _int_const(g, 8, np.uint32, "eight")
    rest = g.op("Cast", [a], "bits", to=TensorProto.UINT32)
    limbs = []
    for i in range(count):
        if i == count - 1:
            low = rest
        else:
            high = g.op("BitShift", [rest, eight], "rest", direction="RIGHT")
            low = g.op("Sub", [rest, g.op("BitShift", [high, eight], direction="LEFT")], "limb")
        limbs.append(g.op("Cast", [low], "limb8", to=TensorProto.UINT8))
        if i < count - 1:
            rest = high
    return limbs


def unsigned_limb_count(max_value: int) -> int:
    """Number of 8-bit limbs that hold every integer in ``[0, max_value]``."""
    count = 1
    while max_value >= 256**count:
        count += 1
    return count


def conv_taps(g: Graph, a: str) -> str:
    """Int32 (H, W, 9) positions of each output pixel's nine 3x3 taps, ordered (dy, dx), in the
    row-major flattened grid of ``a`` (B, H, W, C) padded by one on every side:
    ``index[y, x, 3 dy + dx] = (y + dy)(W + 2) + x + dx``, from ``a``'s runtime shape."""
    shape = g.op("Shape", [a], "shape")
    height = g.op("Squeeze", [_slice(g, shape, 0, 1, 2), _i64(g, [0])], "height")
    width = _slice(g, shape, 0, 2, 3)
    padded_width = g.op("Add", [width, _i64(g, [2])], "padded_width")
    rows = g.op("Range", [_i64(g, 0), height, _i64(g, 1)], "rows")
    cols = g.op("Range", [_i64(g, 0), g.op("Squeeze", [width, _i64(g, [0])]), _i64(g, 1)], "cols")
    row_starts = g.op("Unsqueeze", [g.op("Mul", [rows, padded_width]), _i64(g, [1, 2])], "row_starts")
    taps = g.op("Add", [g.op("Mul", [_i64(g, [dy for dy in range(3) for _ in range(3)]), padded_width]),
                        _i64(g, [dx for _ in range(3) for dx in range(3)])], "taps")
    index = g.op("Add", [g.op("Add", [row_starts, g.op("Unsqueeze", [cols, _i64(g, [1])])]), taps], "tap_index")
    return g.op("Cast", [index], "tap_index", to=TensorProto.INT32)


def _im2col(g: Graph, x: str, channels: int, taps: str) -> str:
    """(B, H, W, 9 C) columns, ordered (dy, dx, c), of a padded NHWC tensor (B, H + 2, W + 2, C):
    one ``Gather`` of the flattened pixels at :func:`conv_taps`' positions ``taps``."""
    flat = g.op("Reshape", [x, _i64(g, [0, -1, channels])], "flat")
    columns = g.op("Gather", [flat, taps], "columns", axis=1)  # (B, H, W, 9, C)
    return g.op("Reshape", [columns, _i64(g, [0, 0, 0, -1])], "im2col")


def integer_conv(g: Graph, a: str, unit: IntegerUnit, taps: str | None = None) -> tuple[str, int]:
    """Exact accumulator (B, H, W, O) of the unit's 3x3 convolution (zero padding) of int32 NHWC
    codes ``a`` with ``|a| <= M`` (``unit.max_input_code``), and its ONNX element type.

    onnxruntime's fast integer GEMM is ``MatMulInteger`` with uint8 activations and int8 weights
    (VNNI / AMX where the CPU has them; its ``ConvInteger`` was several times slower in a probe), so
    the codes are offset to ``a + M`` in ``[0, 2M]``, padded with ``M`` (the offset of a zero), split
    into 8-bit limbs and laid out as an im2col matrix (one ``Gather``); the weights into
    signed 7-bit limbs, each a (9 C, O) int8 matrix. Then ``conv(a + M, w) = conv(a, w) + M sum(w_o)``
    at every position (the padding holds ``M`` too), so the accumulator is ``sum_ij 256^i 128^j
    MatMulInteger(l_i, w_j) - M sum(w_o)``. Every ``MatMulInteger`` sums in int32 (below
    ``255 * 128 * 9 C``); the limb results are combined in int32 where ``sum_ij max l_i max_o
    sum|w_jo| 256^i 128^j + M max_o |sum w_o|`` (a bound of every partial sum in the graph's order)
    is below 2^31, else in int64 (UserError past 2^63).
    """
    weights = unit.weights
    channels = int(weights.shape[1])
    offset = unit.max_input_code
    act_count = unsigned_limb_count(2 * offset)
    w_count = limb_count(int(weights.abs().max()) if weights.numel() else 0)
    w_limbs = split_limbs(weights, w_count)
    top = 2 * offset // 256 ** (act_count - 1)
    a_bounds = [255] * (act_count - 1) + [top] if act_count > 1 else [2 * offset]
    w_sums = [int(w.to(torch.int64).abs().sum(dim=(1, 2, 3)).max()) for w in w_limbs]
    totals = weights.sum(dim=(1, 2, 3))
    if 255 * 128 * 9 * channels >= INT32_LIMIT:
        raise UserError(f"layer {unit.name}: {channels} input channels are too many for int32 "
                        "MatMulInteger sums; use --format onnx or predict --engine integer")
    bound = sum(a_bounds[i] * w_sums[j] * 256**i * 128**j for i in range(act_count) for j in range(w_count))
    bound += offset * int(totals.abs().max())
    if bound >= 2**63:
        raise UserError(f"layer {unit.name}: accumulators up to {bound} do not fit int64; "
                        "use --format onnx or predict --engine integer")
    wide = bound >= INT32_LIMIT - 1  # |acc| < 2^31 - 1: the never-passed threshold 2^31 - 1 stays above it
    dtype, const = (TensorProto.INT64, _i64) if wide else (TensorProto.INT32, _i32)
    shifted = g.op("Add", [a, _i32(g, offset)], "shifted")
    padded = g.op("Pad", [shifted, _i64(g, [0, 1, 1, 0, 0, 1, 1, 0]), _i32(g, offset)], "padded", mode="constant")
    taps = taps or conv_taps(g, a)
    x_cols = [_im2col(g, limb, channels, taps) for limb in _activation_limbs(g, padded, act_count)]
    # rows ordered (dy, dx, c) as the columns
    w_names = [_int_const(g, w.permute(2, 3, 1, 0).reshape(9 * channels, -1).numpy(), np.int8, "weight8")
               for w in w_limbs]
    acc = None
    for i, x in enumerate(x_cols):
        for j, w in enumerate(w_names):
            part = g.op("MatMulInteger", [x, w], "matmulint")
            if wide:
                part = g.op("Cast", [part], to=dtype)
            if i or j:
                part = g.op("Mul", [part, const(g, 256**i * 128**j)])
            acc = part if acc is None else g.op("Add", [acc, part], "acc")
    return g.op("Sub", [acc, const(g, (offset * totals).numpy(), "offset_sums")], "acc"), dtype


def threshold_codes(g: Graph, acc: str, unit: IntegerUnit, dtype: int = TensorProto.INT32) -> str:
    """Int32 output codes of accumulators ``acc`` (B, H, W, O; int32 or int64 ``dtype``) by the
    unit's static threshold table (module docstring); UserError when the engine builds it per batch."""
    req = unit.requant
    if not req.static or req.thresholds() is None:
        raise UserError(
            f"layer {unit.name}: the {req.fmt.spec} quantizer has no static threshold table (too many levels "
            "over the reachable accumulators; the engine builds it per batch), so no fixed graph holds it; "
            "use --format onnx or predict --engine integer")
    orientation, thresholds, values = req.thresholds()
    if int(values.abs().max()) >= INT32_LIMIT:
        raise UserError(f"layer {unit.name}: output codes do not fit int32")
    wide = dtype == TensorProto.INT64
    const, limit = (_i64, 2**63) if wide else (_i32, INT32_LIMIT)
    if bool((orientation < 0).any()):
        acc = g.op("Mul", [acc, const(g, orientation.numpy(), "orientation")], "oriented")
    channels, count = thresholds.shape
    if count > SUM_LIMIT:
        table = lookup_table(thresholds, values, req.bound, limit)
        if table is not None:
            return _lookup_codes(g, acc, table, const)
        return _search_codes(g, acc, thresholds, values, wide, unit.static_bound)
    unused = thresholds == SENTINEL
    t = thresholds.clamp(-(limit - 1), limit - 1)  # an unused slot (never passed, step 0) at the type's top
    steps = torch.where(unused, 0, values[:, 1:] - values[:, :-1])
    code0 = _i32(g, values[:, 0].numpy(), "code0")
    if count == 0:
        return g.op("Add", [g.op("Cast", [g.op("Mul", [acc, const(g, 0)])], to=TensorProto.INT32), code0], "codes")
    out = code0
    expanded = g.op("Unsqueeze", [acc, _i64(g, [4])], "acc5")  # (B, H, W, O, 1)
    table = const(g, t.numpy(), "thresholds")  # (O, K)
    step = _i32(g, steps.numpy(), "steps")
    passed = g.op("Cast", [g.op("GreaterOrEqual", [expanded, table], "passed")], to=TensorProto.INT32)
    part = g.op("ReduceSum", [g.op("Mul", [passed, step]), _i64(g, [4])], "codesum", keepdims=0)
    return g.op("Add", [out, part], "codes")


def lookup_table(thresholds: Tensor, values: Tensor, reach: Tensor, limit: int = INT32_LIMIT,
                 max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The requantization as one table read: per channel ``o``, the codes of every accumulator
    from ``lo_o`` (below the first threshold, or ``-reach_o``) to ``hi_o`` (the last threshold, or
    ``reach_o``), ``table[base_o + j] = v_o[#{k: t_ok <= lo_o + j}]``; an accumulator outside
    ``[lo_o, hi_o]`` has the code of the nearer end (no threshold lies beyond it, or it is
    unreachable: ``|acc| <= reach_o``).

    Returns ``(table, shift, first, last)``: the flat table in the smallest integer type that holds
    the codes, and per channel ``shift = base - lo``, ``first = base``, ``last = base + hi - lo``
    (the graph's index is ``clip(acc + shift, first, last)``), or None where the table would take
    more than ``max_bytes`` (default :data:`LUT_LIMIT_BYTES`) or an index could reach ``limit``
    (the accumulators' type)."""
    max_bytes = LUT_LIMIT_BYTES if max_bytes is None else max_bytes
    valid = thresholds != SENTINEL
    parts, shift, first, last = [], [], [], []
    base = 0
    for o in range(thresholds.shape[0]):
        t = thresholds[o][valid[o]]
        r = int(reach[o])
        lo = min(max(int(t[0]) - 1 if len(t) else 0, -r), r)
        hi = max(min(int(t[-1]) if len(t) else 0, r), lo)
        if base + hi - lo + 1 > max_bytes:
            return None
        counts = torch.searchsorted(t, torch.arange(lo, hi + 1, dtype=torch.int64), right=True)
        parts.append(values[o][counts])
        shift.append(base - lo)
        first.append(base)
        last.append(base + hi - lo)
        base += hi - lo + 1
    codes = torch.cat(parts).numpy()
    dtype = next(d for d in (np.uint8, np.int8, np.int16, np.int32)
                 if np.iinfo(d).min <= codes.min() and codes.max() <= np.iinfo(d).max)
    shift_np = np.asarray(shift, np.int64)
    if codes.size * np.dtype(dtype).itemsize > max_bytes or \
            int(reach.max()) + int(np.abs(shift_np).max()) >= limit:
        return None
    return codes.astype(dtype), shift_np, np.asarray(first, np.int64), np.asarray(last, np.int64)


def _lookup_codes(g: Graph, acc: str, table: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  const) -> str:
    """Int32 codes ``table[clip(acc + shift, first, last)]`` (:func:`lookup_table`): ``Add``,
    ``Max``, ``Min`` and one ``Gather``."""
    codes, shift, first, last = table
    index = g.op("Add", [acc, const(g, shift, "lut_shift")], "lut_index")
    index = g.op("Min", [g.op("Max", [index, const(g, first, "lut_first")]), const(g, last, "lut_last")], "lut_index")
    out = g.op("Gather", [_int_const(g, codes, codes.dtype, "lut"), index], "codes", axis=0)
    return out if codes.dtype == np.int32 else g.op("Cast", [out], "codes", to=TensorProto.INT32)


def linear_guess(thresholds: Tensor, bound: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """A per-channel first guess of ``#{k: t_k <= acc}`` for ``|acc| <= bound`` (< 2^24), for
    nearly evenly spaced thresholds (nearest rounding after an affine BatchNorm):
    ``guess = clip(floor((fl32(acc) - c) * m) + s, 0, n)`` in float32, with ``c`` the first
    threshold, ``m`` the inverse mean spacing, ``s`` a shift and ``n`` the channel's thresholds.

    Returns ``(c, m, s, width)`` (float32 arrays (O,) and the int ``width``) such that every
    ``acc`` has ``guess <= count <= guess + width``, or None where that needs ``width >= n / 4``.
    Both functions are monotone step functions of ``acc``, so their difference is checked at every
    point where either can step (each threshold, each ``c + j / m`` with the integers around it
    that float32 rounding can reach)
    with the float32 product and the exact one (any faithful float32 rounding of the product
    lies between their floors)."""
    channels, _ = thresholds.shape
    valid = thresholds != SENTINEL
    c = np.zeros(channels, np.float32)
    m = np.zeros(channels, np.float32)
    shift = np.zeros(channels, np.float32)
    width = 0
    for o in range(channels):
        t = thresholds[o][valid[o]].numpy()
        n = len(t)
        if n >= 2 and t[-1] > t[0]:
            c[o], m[o] = np.float32(t[0]), np.float32((n - 1) / float(t[-1] - t[0]))
        elif n:
            c[o] = np.float32(t[0])
        js = np.arange(-1, n + 2, dtype=np.float64)
        centres = np.floor(float(c[o]) + js / float(m[o])) if m[o] else np.array([float(c[o])])
        # the float32 product is off by at most an ulp of n, i.e. 2^-16 spacings: that many accumulators
        reach = 2 + (int(2.0**-16 / float(m[o])) if m[o] else 0)
        if reach > 64:
            return None
        around = np.arange(-reach, reach + 1)
        points = np.concatenate([t - 1, t, t + 1, (centres[:, None] + around).ravel(), [-bound, bound]])
        points = np.clip(points, -bound, bound).astype(np.int64)
        count = np.searchsorted(t, points, side="right")
        raws = [np.floor((points.astype(np.float32) - c[o]) * m[o]).astype(np.int64),
                np.floor((points.astype(np.float64) - float(c[o])) * float(m[o])).astype(np.int64)]
        shift[o] = min(int((count - np.clip(raw, -1, n + 1)).min()) for raw in raws)
        errors = [count - np.clip(raw + int(shift[o]), 0, n) for raw in raws]  # the guess as the graph clips it
        if min(int(e.min()) for e in errors) < 0:
            return None
        width = max(width, *(int(e.max()) for e in errors))
    if 4 * width >= max(1, int(valid.sum(dim=1).max())):
        return None
    return c, m, shift, width


def _search_codes(g: Graph, acc: str, thresholds: Tensor, values: Tensor, wide: bool, bound: int) -> str:
    """``values[o, #{k: t_ok <= acc}]`` by a branchless binary search over each channel's sorted
    thresholds (padded with never-passed slots), on ``q = o W + pos`` (``pos``: thresholds passed
    so far, ``W`` the padded table width): each round gathers the probed threshold from a copy of
    the flat tables shifted by the round's step (no index arithmetic), compares and adds ``step *
    passed`` (``Cast`` + ``Mul`` + ``Add``: onnxruntime's ``Where`` is several times slower). Where
    :func:`linear_guess` bounds the count to a window of ``w + 1`` positions (``|acc| < 2^24``,
    evenly spaced thresholds), the search starts from that float32 guess and takes
    ``bit_length(w)`` rounds instead of ``bit_length(K)``. A last ``Gather`` reads the code, or
    where every step of the channels' codes is +1 (the usual nearest staircase) one ``Add`` of
    ``v_0``."""
    channels, count = thresholds.shape
    limit, dtype, const = (2**63, np.int64, _i64) if wide else (INT32_LIMIT, np.int32, _i32)
    guess = linear_guess(thresholds, bound) if not wide and bound < FLOAT32_EXACT else None
    rounds = count.bit_length() if guess is None else guess[3].bit_length()
    width = count + 2**rounds  # room for every probe: pos + step - 1 <= count + 2^rounds - 1
    padded = torch.full((channels, width), limit - 1, dtype=torch.int64)
    padded[:, :count] = thresholds.clamp(-(limit - 1), limit - 1)
    flat = torch.cat([padded.reshape(-1), torch.full((width,), limit - 1, dtype=torch.int64)])
    codes = torch.zeros(channels, width + 1, dtype=torch.int64)
    codes[:, : count + 1] = values
    codes[:, count + 1 :] = values[:, -1:]
    base = torch.arange(channels, dtype=torch.int64)  # per channel: the last axis
    if guess is None:
        step = 2 ** (rounds - 1)
        # the first round compares with per-channel constants
        passed = g.op("GreaterOrEqual", [acc, const(g, padded[:, step - 1].numpy(), "first")])
        q = g.op("Add", [g.op("Mul", [g.op("Cast", [passed], to=TensorProto.INT32), _i32(g, step)]),
                         _i32(g, (base * width).numpy())], "pos")
    else:
        c, m, shift, _ = guess
        n = (thresholds != SENTINEL).sum(dim=1).numpy().astype(np.float32)
        accf = g.op("Cast", [acc], "accf", to=TensorProto.FLOAT)
        u = g.op("Floor", [g.op("Mul", [g.op("Sub", [accf, g.const(c, "guess_c")]), g.const(m, "guess_m")])])
        u = g.op("Min", [g.op("Max", [g.op("Add", [u, g.const(shift, "guess_s")]), g.const(0.0)]), g.const(n, "n")])
        q = g.op("Add", [g.op("Cast", [u], to=TensorProto.INT32), _i32(g, (base * width).numpy())], "pos")
        step = 2**rounds
    while step > 1:
        step //= 2
        shifted = _int_const(g, flat[step - 1 : step - 1 + channels * width].numpy(), dtype, "thresholds")
        passed = g.op("Cast", [g.op("GreaterOrEqual", [acc, g.op("Gather", [shifted, q], "probe", axis=0)])],
                      "passed", to=TensorProto.INT32)
        q = g.op("Add", [q, passed if step == 1 else g.op("Mul", [passed, _i32(g, step)])], "pos")
    valid = thresholds != SENTINEL
    if bool(((values[:, 1:] - values[:, :-1] == 1) | ~valid).all()):  # a staircase of unit steps: v_0 + pos
        return g.op("Add", [q, _i32(g, (values[:, 0] - base * width).numpy(), "code0")], "codes")
    # o * (width + 1) + pos = q + o: the code tables are one entry wider than the threshold tables
    index = g.op("Add", [q, _i32(g, base.numpy())], "index")
    return g.op("Gather", [_i32(g, codes.reshape(-1).numpy(), "codes"), index], "codes", axis=0)


def maxpool_codes(g: Graph, a: str) -> str:
    """2x2 max pooling, stride 2, of int32 NHWC codes: ``Max`` of the four stride-2 slices."""
    big = 2**62
    parts = [_slice(g, _slice(g, a, 1, dy, big, 2), 2, dx, big, 2) for dy in (0, 1) for dx in (0, 1)]
    return g.op("Max", parts, "pool")


def _up2_axis(g: Graph, c: str, axis: int) -> str:
    """``4 x`` bilinear x2 along ``axis`` (1: H or 2: W) of int32 NHWC codes, as ``unet.integer.kernels``:
    ``even = c[j-1] + 3 c[j]``, ``odd = 3 c[j] + c[j+1]``, the edge repeated."""
    big = 2**62
    three = g.op("Mul", [c, _i32(g, 3)])
    prev = g.op("Concat", [_slice(g, c, axis, 0, 1), _slice(g, c, axis, 0, -1)], axis=axis)
    nxt = g.op("Concat", [_slice(g, c, axis, 1, big), _slice(g, c, axis, -1, big)], axis=axis)
    even = g.op("Unsqueeze", [g.op("Add", [prev, three]), _i64(g, [axis + 1])])
    odd = g.op("Unsqueeze", [g.op("Add", [three, nxt]), _i64(g, [axis + 1])])
    pairs = g.op("Concat", [even, odd], axis=axis + 1)
    if axis == 2:  # (B, H, W, 2, C) -> (B, H, 2W, C)
        return g.op("Reshape", [pairs, g.op("Concat", [_i64(g, [0, 0, -1]), _slice(g, g.op("Shape", [c]), 0, 3, 4)],
                                              axis=0)], "up_w")
    # (B, H, 2, W, C) -> (B, 2H, W, C)
    return g.op("Reshape", [pairs, g.op("Concat", [_i64(g, [0, -1]), _slice(g, g.op("Shape", [c]), 0, 2, 4)],
                                        axis=0)], "up_h")


def upsample_codes(g: Graph, a: str) -> str:
    """Bilinear x2 (align_corners False) of int32 NHWC codes times 16 (``upsample2_codes``)."""
    return _up2_axis(g, _up2_axis(g, a, 1), 2)


# --- the model -----------------------------------------------------------------------------------


def check_exportable(engine: IntegerUNet) -> None:
    """UserError (one line, the reason) for a model whose integer engine no fixed integer graph holds."""
    if engine.mode == "ternary":
        raise UserError("Ternary models keep float activations (no activation codes): use --format onnx")
    if engine.mode == "int":
        raise UserError("INT (min-max) quantizers take each batch's range, so their thresholds change per batch "
                        "and no fixed integer graph holds them: use --format onnx or predict --engine integer")
    if engine.fmt.max_code * UP_GAIN >= INT32_LIMIT:
        raise UserError(f"the activation codes of {engine.fmt.spec} (up to {engine.fmt.max_code}, x{UP_GAIN} "
                        "upsampled) do not fit int32")


def integer_onnx_model(
    model: UNet, input_hw: tuple[int, int], metadata: dict | None = None, taps: bool = False,
    start: str = "image", engine: IntegerUNet | None = None,
) -> onnx.ModelProto:
    """The integer ONNX ModelProto of ``model`` (module docstring); batch, H and W dynamic.

    ``taps``: every unit's int32 codes as extra outputs ``codes:<unit>`` (``enc1.0`` ...
    ``dec1.1``, as :meth:`IntegerUNet.forward_codes`). ``start="codes"``: the graph reads the
    first block's output codes (int32 ``enc1_codes``, (B, C, H, W)) instead of the image, to check
    the integer part on the engine's own first-block codes. ``engine``: an already built
    ``IntegerUNet.from_model(model)``.
    """
    if start not in ("image", "codes"):
        raise ValueError(f"start must be 'image' or 'codes', got {start!r}")
    hw = check_input_hw(input_hw)
    if not isinstance(model, UNet):
        raise UserError(f"only the project's UNet can be exported, got {type(model).__name__}")
    engine = engine or IntegerUNet.from_model(model)
    check_exportable(engine)
    fmt = engine.fmt
    g = Graph()
    tapped: list[str] = []

    def tap(name: str, codes: str, nhwc: bool = True) -> None:
        if taps:
            tapped.append(g.op("Transpose", [codes], f"codes:{name}", perm=[0, 3, 1, 2]) if nhwc else
                          g.op("Identity", [codes], f"codes:{name}"))

    def block(stage: Stage, y: str) -> str:
        if stage.float_weights:
            if start == "codes":
                return g.op("Transpose", [CODES_INPUT], "nhwc", perm=[0, 2, 3, 1])
            for i, unit in enumerate(engine.model.block(stage)):
                y = unit_nodes(g, y, unit, onnx_weight, onnx_activation)
                codes = g.op("Cast", [g.op("Mul", [y, g.const(1.0 / fmt.scale)])], "codes", to=TensorProto.INT32)
                tap(f"{stage.name}.{i}", codes, nhwc=False)
            return g.op("Transpose", [codes], "nhwc", perm=[0, 2, 3, 1])  # the integer part runs NHWC
        for i in range(len(engine.model.block(stage))):
            unit = engine.units[f"{stage.name}.{i}"]
            if depth not in taps_at:
                taps_at[depth] = conv_taps(g, y)
            acc, dtype = integer_conv(g, y, unit, taps_at[depth])
            y = threshold_codes(g, acc, unit, dtype)
            tap(unit.name, y)
        return y

    def pool(y: str) -> str:
        nonlocal depth
        depth += 1
        return maxpool_codes(g, y)

    def up_cat(y: str, skip: str) -> str:
        nonlocal depth
        depth -= 1
        return g.op("Concat", [upsample_codes(g, y), g.op("Mul", [skip, _i32(g, UP_GAIN)])], "cat", axis=3)

    depth = 0  # the resolution: H / 2^depth
    taps_at: dict[int, str] = {}
    y = walk(INPUT, block, pool, up_cat)
    y = g.op("Transpose", [y], "nchw", perm=[0, 3, 1, 2])
    values = g.op("Mul", [g.op("Cast", [y], to=TensorProto.FLOAT), g.const(fmt.scale)], "values")
    out = g.op("Sigmoid", [conv_nodes(g, values, engine.model.head, onnx_weight)], "sigmoid")
    rename_output(g, out)
    props = model_metadata(model, hw, metadata or {}, "onnx-int")
    opsets = [helper.make_opsetid("", OPSET)]
    proto = make_model(g, OUTPUT, ["batch", 1, "height", "width"], props, opsets)
    if start == "codes":
        channels = engine.model.base_channels
        proto.graph.input[0].CopyFrom(helper.make_tensor_value_info(
            CODES_INPUT, TensorProto.INT32, ["batch", channels, "height", "width"]))
    if taps:
        proto.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.INT32, [None] * 4) for t in tapped)
    onnx.checker.check_model(proto)
    return proto


def export_onnx_int(model: UNet, path: Path, input_hw: tuple[int, int], metadata: dict) -> None:
    """Write ``model`` as an integer ONNX graph to ``path`` (module docstring); ``input_hw`` and
    ``metadata`` as for :func:`unet.export.onnx.export_onnx`."""
    save_model(integer_onnx_model(model, input_hw, metadata), Path(path))


class IntegerOnnxForward:
    """The model's integer ONNX graph run with onnxruntime on the CPU.

    ``IntegerOnnxForward(model, input_hw)(x)`` maps a float (B, 1, H, W) tensor (H, W multiples
    of 8) to probabilities like ``IntegerUNet.from_model(model)(x)``; :meth:`forward_codes` gives
    every unit's codes (int64) when built with ``taps=True``.
    """

    def __init__(self, model: UNet, input_hw: tuple[int, int], threads: int | None = None,
                 taps: bool = False, start: str = "image") -> None:
        self.proto = integer_onnx_model(model, input_hw, taps=taps, start=start)
        self.session = cpu_session(self.proto, threads)
        self.start = start
        self.names = [o.name for o in self.proto.graph.output]

    def _run(self, x: Tensor) -> list[np.ndarray]:
        if self.start == "codes":
            return self.session.run(self.names, {CODES_INPUT: x.detach().to("cpu", torch.int32).contiguous().numpy()})
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"input must be (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"input H and W must be divisible by 8, got {tuple(x.shape[-2:])}")
        return self.session.run(self.names, {INPUT: x.detach().to("cpu", torch.float32).contiguous().numpy()})

    def __call__(self, x: Tensor) -> Tensor:
        """Probabilities (B, 1, H, W), float32 (``x``: the image, or int codes with ``start="codes"``)."""
        return torch.from_numpy(self._run(x)[0])

    def forward_codes(self, x: Tensor) -> dict[str, Tensor]:
        """Int64 codes of every unit, keyed ``enc1.0`` ... ``dec1.1`` (needs ``taps=True``)."""
        results = self._run(x)
        return {name.split(":", 1)[1].rsplit("_", 1)[0]: torch.from_numpy(r).to(torch.int64)
                for name, r in zip(self.names, results, strict=True) if name.startswith("codes:")}


@torch.no_grad()
def first_block_flips(model: UNet, x: Tensor, threads: int | None = None) -> tuple[int, int]:
    """``(codes that differ, codes)`` of the first block's output (``enc1.1``) between
    onnxruntime's float graph and PyTorch's (the integer engine's) on images ``x``."""
    engine = IntegerUNet.from_model(model)
    expected = engine.forward_codes(x)
    last = [k for k in expected if k.startswith("enc1.")][-1]
    got = IntegerOnnxForward(model, tuple(x.shape[-2:]), threads, taps=True).forward_codes(x)
    return int((got[last] != expected[last]).sum()), int(expected[last].numel())
