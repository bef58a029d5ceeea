"""The integer ONNX's layers: graph emitters for the integer engine's arithmetic on int32 NHWC codes
(opset 13, standard operators only), composed into the model by :mod:`unet.export.onnx_int`.

* :func:`integer_conv`: a quantized 3x3 convolution's exact accumulator (uint8 activation limbs
  laid out by one ``Gather`` at :func:`conv_taps`' positions, int8 weight limbs, ``MatMulInteger``).
* :func:`decoder_conv`: a decoder block's first convolution on ``[bilinear x2 of y, skip]``
  without the upsampled codes (four phase kernels on ``y``'s own pixels).
* :func:`threshold_codes`: the requantization by the engine's static threshold tables (one table
  read, a binary search, or a broadcast comparison).
* :func:`maxpool_codes`, :func:`upsample_codes`: pooling and the x16 bilinear x2 of codes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from onnx import TensorProto, numpy_helper
from torch import Tensor

from ..errors import UserError
from ..integer.engine import UP_GAIN, IntegerUnit
from ..integer.fast import limb_count, split_limbs
from ..integer.thresholds import SENTINEL
from .onnx import Graph

#: Tables of at most this many thresholds per channel are applied by one broadcast comparison
#: (a (B, H, W, C, K) intermediate); longer ones by a binary search (:func:`_search_codes`).
SUM_LIMIT = 3
INT32_LIMIT = 2**31
#: Integers of magnitude below this are exact in float32.
FLOAT32_EXACT = 2**24
#: A layer's requantization table (:func:`lookup_table`) takes at most this many bytes; a longer
#: one gives way to the binary search over the thresholds.
LUT_LIMIT_BYTES = 2**23


#: Integer initializers of this many bytes or more are stored once per graph: the decoder's edge
#: strips reuse their unit's weights and tables.
SHARE_FROM_BYTES = 4096


def int_const(g: Graph, value: np.ndarray | int, dtype: type, hint: str = "k") -> str:
    """An integer initializer of numpy ``dtype`` holding ``value`` (one of :data:`SHARE_FROM_BYTES`
    bytes or more is stored once per graph and named again where the same values recur)."""
    array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
    key = None
    if array.nbytes >= SHARE_FROM_BYTES:
        key = (array.dtype.str, array.shape, hashlib.sha1(array.tobytes()).hexdigest())
        known = g.shared.get(key)
        if known is not None:
            return known
    name = g.name(hint)
    g.initializers.append(numpy_helper.from_array(array, name))
    if key is not None:
        g.shared[key] = name
    return name


def i32(g: Graph, value: np.ndarray | int, hint: str = "k") -> str:
    return int_const(g, value, np.int32, hint)


def i64(g: Graph, value: list[int] | int, hint: str = "k") -> str:
    return int_const(g, value, np.int64, hint)


def slice_axis(g: Graph, x: str, axis: int, start: int, end: int, step: int = 1) -> str:
    return g.op("Slice", [x, i64(g, [start]), i64(g, [end]), i64(g, [axis]), i64(g, [step])], "slice")


# --- integer layers ------------------------------------------------------------------------------


def _activation_limbs(g: Graph, a: str, count: int) -> list[str]:
    """Uint8 limbs of non-negative int32 codes ``a``: ``a = sum_i l_i 256^i``, by shifts on uint32
    (``l_i = r_i - 256 r_{i+1}``, ``r_{i+1} = r_i >> 8``: every ``Cast`` to uint8 is in range)."""
    if count == 1:
        return [g.op("Cast", [a], "limb8", to=TensorProto.UINT8)]
    eight = int_const(g, 8, np.uint32, "eight")
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


def _window_offsets(g: Graph, padded_width: str) -> str:
    """(9,) int64 offsets ``dy * padded_width + dx`` of a 3x3 window's taps, ordered (dy, dx), in a
    row-major grid ``padded_width`` (a (1,) int64 tensor) wide."""
    return g.op("Add", [g.op("Mul", [i64(g, [dy for dy in range(3) for _ in range(3)]), padded_width]),
                        i64(g, [dx for _ in range(3) for dx in range(3)])], "taps")


def conv_taps(g: Graph, a: str) -> str:
    """Int32 (H, W, 9) positions of each output pixel's nine 3x3 taps, ordered (dy, dx), in the
    row-major flattened grid of ``a`` (B, H, W, C) padded by one on every side:
    ``index[y, x, 3 dy + dx] = (y + dy)(W + 2) + x + dx``, from ``a``'s runtime shape."""
    shape = g.op("Shape", [a], "shape")
    height = g.op("Squeeze", [slice_axis(g, shape, 0, 1, 2), i64(g, [0])], "height")
    width = slice_axis(g, shape, 0, 2, 3)
    padded_width = g.op("Add", [width, i64(g, [2])], "padded_width")
    rows = g.op("Range", [i64(g, 0), height, i64(g, 1)], "rows")
    cols = g.op("Range", [i64(g, 0), g.op("Squeeze", [width, i64(g, [0])]), i64(g, 1)], "cols")
    row_starts = g.op("Unsqueeze", [g.op("Mul", [rows, padded_width]), i64(g, [1, 2])], "row_starts")
    index = g.op("Add", [g.op("Add", [row_starts, g.op("Unsqueeze", [cols, i64(g, [1])])]),
                         _window_offsets(g, padded_width)], "tap_index")
    return g.op("Cast", [index], "tap_index", to=TensorProto.INT32)


def _im2col(g: Graph, x: str, channels: int, taps: str, shape: list[int] | None = None) -> str:
    """Columns ``(..., 9 C)``, ordered (dy, dx, c), of a padded NHWC tensor (B, H + 2, W + 2, C):
    one ``Gather`` of the flattened pixels at the positions ``taps`` (:func:`conv_taps`: (H, W, 9),
    the default ``shape`` ``[0, 0, 0, -1]`` gives (B, H, W, 9 C))."""
    flat = g.op("Reshape", [x, i64(g, [0, -1, channels])], "flat")
    columns = g.op("Gather", [flat, taps], "columns", axis=1)  # (B, *taps.shape, C)
    return g.op("Reshape", [columns, i64(g, shape or [0, 0, 0, -1])], "im2col")


class LimbConv:
    """A 3x3 convolution's integer GEMMs on offset codes: ``conv(a + M, w)`` for codes ``|a| <= M``
    and int64 kernels ``w`` (O, C, 3, 3), as ``sum_ij 256^i 128^j MatMulInteger(l_i, w_j)`` over the
    uint8 limbs ``l_i`` of ``a + M`` in ``[0, 2M]`` and the signed 7-bit limbs ``w_j`` of ``w``.

    ``bound`` bounds every partial sum of those products and of ``M sum(w_o)`` (what the caller
    subtracts): ``sum_ij max l_i max_o sum|w_jo| 256^i 128^j + M max_o |sum w_o|``. Every single
    ``MatMulInteger`` sums in int32 (at most ``255 * 64 * 9 C``; layers with ``255 * 128 * 9 C``
    past 2^31 are refused), and no pair of uint8 x int8 products passes int16, so onnxruntime's
    non-VNNI kernels do not saturate either.
    """

    def __init__(self, name: str, weights: Tensor, offset: int) -> None:
        self.weights, self.offset = weights.to(torch.int64), offset
        self.channels = int(weights.shape[1])
        if 255 * 128 * 9 * self.channels >= INT32_LIMIT:
            raise UserError(f"layer {name}: {self.channels} input channels are too many for int32 "
                            "MatMulInteger sums; use --format onnx or predict --engine integer")
        self.act_count = unsigned_limb_count(2 * offset)
        top = 2 * offset // 256 ** (self.act_count - 1)
        a_bounds = [255] * (self.act_count - 1) + [top] if self.act_count > 1 else [2 * offset]
        w_count = limb_count(int(self.weights.abs().max()) if self.weights.numel() else 0)
        self.w_limbs = split_limbs(self.weights, w_count)
        w_sums = [int(w.abs().sum(dim=(1, 2, 3)).max()) for w in self.w_limbs]
        self.totals = self.weights.sum(dim=(1, 2, 3))
        self.bound = sum(a_bounds[i] * w_sums[j] * 256**i * 128**j
                         for i in range(self.act_count) for j in range(w_count))
        self.bound += offset * int(self.totals.abs().max())

    def products(self, g: Graph, padded: str, taps: str, shape: list[int] | None, dtype: int) -> str:
        """``conv(a + M, w)`` in ``dtype`` at the positions ``taps`` of ``padded`` (int32 ``a + M``,
        padded): columns ``(..., O)`` as :func:`_im2col` lays them out with ``shape``."""
        const = i64 if dtype == TensorProto.INT64 else i32
        weights = [int_const(g, w.permute(2, 3, 1, 0).reshape(9 * self.channels, -1).numpy(), np.int8, "weight8")
                   for w in self.w_limbs]  # rows ordered (dy, dx, c) as the columns
        acc = None
        for i, limb in enumerate(_activation_limbs(g, padded, self.act_count)):
            columns = _im2col(g, limb, self.channels, taps, shape)
            for j, w in enumerate(weights):
                part = g.op("MatMulInteger", [columns, w], "matmulint")
                if dtype == TensorProto.INT64:
                    part = g.op("Cast", [part], to=dtype)
                if i or j:
                    part = g.op("Mul", [part, const(g, 256**i * 128**j)])
                acc = part if acc is None else g.op("Add", [acc, part], "acc")
        return acc


def _accumulator_type(name: str, bound: int) -> int:
    """INT32 where ``bound`` bounds every partial sum below 2^31 - 1 (the never-passed threshold
    2^31 - 1 stays above every accumulator), else INT64; UserError past 2^63."""
    if bound >= 2**63:
        raise UserError(f"layer {name}: accumulators up to {bound} do not fit int64; "
                        "use --format onnx or predict --engine integer")
    return TensorProto.INT64 if bound >= INT32_LIMIT - 1 else TensorProto.INT32


def _offset_padded(g: Graph, a: str, offset: int, mode: str = "constant") -> str:
    """``a + offset`` padded by one pixel on every side: with ``offset`` (a zero code) or, with
    ``mode="edge"``, the edge pixels repeated."""
    shifted = g.op("Add", [a, i32(g, offset)], "shifted")
    pads = i64(g, [0, 1, 1, 0, 0, 1, 1, 0])
    if mode == "edge":
        return g.op("Pad", [shifted, pads], "padded", mode="edge")
    return g.op("Pad", [shifted, pads, i32(g, offset)], "padded", mode="constant")


def integer_conv(g: Graph, a: str, unit: IntegerUnit, taps: str | None = None) -> tuple[str, int]:
    """Exact accumulator (B, H, W, O) of the unit's 3x3 convolution (zero padding) of int32 NHWC
    codes ``a`` with ``|a| <= M`` (``unit.max_input_code``), and its ONNX element type.

    onnxruntime's fast integer GEMM is ``MatMulInteger`` with uint8 activations and int8 weights
    (VNNI / AMX where the CPU has them; its ``ConvInteger`` was several times slower in a probe), so
    the codes are offset to ``a + M`` in ``[0, 2M]``, padded with ``M`` (the offset of a zero), split
    into 8-bit limbs and laid out as an im2col matrix (one ``Gather`` at ``taps``, :func:`conv_taps`
    of ``a`` by default); the weights into signed 7-bit limbs (:class:`LimbConv`). Then
    ``conv(a + M, w) = conv(a, w) + M sum(w_o)`` at every position (the padding holds ``M`` too),
    so the accumulator is ``sum_ij 256^i 128^j MatMulInteger(l_i, w_j) - M sum(w_o)``: in int32
    where :attr:`LimbConv.bound` is below 2^31, else in int64 (UserError past 2^63).
    """
    conv = LimbConv(unit.name, unit.weights, unit.max_input_code)
    dtype = _accumulator_type(unit.name, conv.bound)
    const = i64 if dtype == TensorProto.INT64 else i32
    padded = _offset_padded(g, a, conv.offset)
    acc = conv.products(g, padded, taps or conv_taps(g, a), None, dtype)
    return g.op("Sub", [acc, const(g, (conv.offset * conv.totals).numpy(), "offset_sums")], "acc"), dtype


#: ``PHASE_TAPS[p, d]``: the weights of ``y[i-1], y[i], y[i+1]`` in ``u[2i + p + d - 1]``, the
#: 3x3 tap ``d`` of output phase ``p`` (row or column parity) of the x4 bilinear x2 ``u`` of
#: ``y`` along one axis (``u[2j] = y[j-1] + 3 y[j]``, ``u[2j+1] = 3 y[j] + y[j+1]``).
PHASE_TAPS = torch.tensor([[[3, 1, 0], [1, 3, 0], [0, 3, 1]],
                           [[1, 3, 0], [0, 3, 1], [0, 1, 3]]], dtype=torch.int64)


def phase_kernels(weights: Tensor) -> Tensor:
    """The 3x3 kernels on ``y`` of a 3x3 convolution ``w`` (O, C, 3, 3) of the x16 bilinear x2 of
    ``y``: ``k[(p, q, o), c, i, j] = sum_{dy,dx} w[o, c, dy, dx] T[p, dy, i] T[q, dx, j]``
    (``T`` = :data:`PHASE_TAPS`), (4 O, C, 3, 3) int64, output channels ordered (row phase,
    column phase, o). Output pixel ``(2i + p, 2j + q)`` of the convolution is the kernel ``(p, q)``
    at ``y``'s pixel ``(i, j)``, wherever its taps stay inside the upsampled image."""
    out = torch.einsum("ocyx,pyi,qxj->pqocij", weights.to(torch.int64), PHASE_TAPS, PHASE_TAPS)
    return out.reshape(-1, *out.shape[3:])


def phase_taps(g: Graph, y: str) -> str:
    """Int32 (h, w, 2, 2, 9) positions, in the flattened grid of the x2 image (2h, 2w) padded by
    one, of the 3x3 taps of its pixel ``(2i + p, 2j + q)``, ordered (i, j, p, q, dy, dx):
    ``(2i + p + dy)(2w + 2) + 2j + q + dx``, from ``y``'s (B, h, w, C) runtime shape."""
    shape = g.op("Shape", [y], "shape")
    half_rows = g.op("Squeeze", [slice_axis(g, shape, 0, 1, 2), i64(g, [0])], "height")
    half_cols = g.op("Squeeze", [slice_axis(g, shape, 0, 2, 3), i64(g, [0])], "width")
    padded_width = g.op("Add", [g.op("Mul", [slice_axis(g, shape, 0, 2, 3), i64(g, [2])]), i64(g, [2])])
    rows = g.op("Mul", [g.op("Range", [i64(g, 0), half_rows, i64(g, 1)]), g.op("Mul", [padded_width, i64(g, [2])])])
    cols = g.op("Mul", [g.op("Range", [i64(g, 0), half_cols, i64(g, 1)]), i64(g, [2])])
    row_phase = g.op("Mul", [i64(g, [[0], [1]]), padded_width])  # (2, 1)
    index = g.op("Add", [g.op("Unsqueeze", [rows, i64(g, [1, 2, 3, 4])]), g.op("Unsqueeze", [cols, i64(g, [1, 2, 3])])])
    index = g.op("Add", [index, g.op("Unsqueeze", [g.op("Add", [row_phase, i64(g, [0, 1])]), i64(g, [2])])])
    index = g.op("Add", [index, _window_offsets(g, padded_width)], "phase_index")
    return g.op("Cast", [index], "phase_index", to=TensorProto.INT32)


def _edge_fix(g: Graph, codes: str, y: str, skip: str, unit: IntegerUnit) -> str:
    """``codes`` (B, 2h, 2w, O) with its first and last rows and columns recomputed where the
    convolution's zero padding meets the upsampled image (which :func:`decoder_conv`'s phase
    kernels on the edge-padded ``y`` do not see): per axis, one :func:`integer_conv` of the
    concatenated ``[x16 bilinear x2 of y, 16 skip]`` on a four-pixel strip, the image's first two
    and last two pixels side by side, of which the strip's outer two outputs are exact."""
    big = 2**62

    def ends(x: str, axis: int) -> str:  # first two and last two pixels along axis
        return g.op("Concat", [slice_axis(g, x, axis, 0, 2), slice_axis(g, x, axis, -2, big)], axis=axis)

    def strip(axis: int) -> str:
        up = ends(upsample_codes(g, ends(y, axis)), axis)  # the x2 of y's two end rows holds the image's
        x = g.op("Concat", [up, g.op("Mul", [ends(skip, axis), i32(g, UP_GAIN)])], "cat", axis=3)
        acc, dtype = integer_conv(g, x, unit)
        return threshold_codes(g, acc, unit, dtype)

    rows = strip(1)
    codes = g.op("Concat", [slice_axis(g, rows, 1, 0, 1), slice_axis(g, codes, 1, 1, -1),
                            slice_axis(g, rows, 1, 3, 4)], "edge_rows", axis=1)
    cols = strip(2)
    return g.op("Concat", [slice_axis(g, cols, 2, 0, 1), slice_axis(g, codes, 2, 1, -1),
                           slice_axis(g, cols, 2, 3, 4)], "edge_cols", axis=2)


def decoder_conv(g: Graph, y: str, skip: str, skip_channels: int, unit: IntegerUnit, taps: str | None = None,
                 skip_taps: str | None = None) -> str:
    """Int32 codes (B, 2h, 2w, O) of a decoder block's first unit on ``[u, 16 skip]``, ``u`` the
    x16 bilinear x2 of the codes ``y`` (B, h, w, Cu), ``skip`` (B, 2h, 2w, Cs), without forming
    ``u``. The unit's weights are ``[w_u, w_s]`` (the last ``skip_channels`` for the skip);
    ``conv(u, w_u)`` is :func:`phase_kernels` on ``y`` edge-padded (``taps``:
    :func:`conv_taps` of ``y``), four outputs per pixel of ``y``; ``16 conv(skip, w_s)`` is laid
    out in the same (i, j, p, q) order (``skip_taps``: :func:`phase_taps`). Both are
    :class:`LimbConv` GEMMs on the codes offset by their bound ``M = ceil(M_unit / 16)``; their sum
    (int32 where the bounds allow, else int64) is requantized in that order, the phases put in
    place (``Transpose``), and the outer rows and columns, where the convolution's zero padding
    meets the image, recomputed by :func:`integer_conv` on four-pixel strips (:func:`_edge_fix`)."""
    cu = int(unit.weights.shape[1]) - skip_channels
    offset = -(-unit.max_input_code // UP_GAIN)  # |y|, |skip| <= M_unit / 16: the x16 inputs stay within M_unit
    up = LimbConv(unit.name, phase_kernels(unit.weights[:, :cu]), offset)
    side = LimbConv(unit.name, unit.weights[:, cu:], offset)
    dtype = _accumulator_type(unit.name, up.bound + UP_GAIN * side.bound)
    const = i64 if dtype == TensorProto.INT64 else i32
    channels = int(unit.weights.shape[0])
    acc_up = up.products(g, _offset_padded(g, y, offset, "edge"), taps or conv_taps(g, y), None, dtype)
    acc_up = g.op("Reshape", [acc_up, i64(g, [0, 0, 0, 2, 2, channels])], "phases")
    acc_skip = side.products(g, _offset_padded(g, skip, offset), skip_taps or phase_taps(g, y),
                             [0, 0, 0, 2, 2, -1], dtype)
    acc = g.op("Add", [acc_up, g.op("Mul", [acc_skip, const(g, UP_GAIN)])], "acc")
    offsets = up.totals.reshape(2, 2, channels) * offset + UP_GAIN * offset * side.totals
    acc = g.op("Sub", [acc, const(g, offsets.numpy(), "offset_sums")], "acc")
    codes = g.op("Transpose", [threshold_codes(g, acc, unit, dtype)], "phases", perm=[0, 1, 3, 2, 4, 5])
    shape = g.op("Concat", [slice_axis(g, g.op("Shape", [skip]), 0, 0, 3), i64(g, [channels])], axis=0)
    return _edge_fix(g, g.op("Reshape", [codes, shape], "codes"), y, skip, unit)


def threshold_codes(g: Graph, acc: str, unit: IntegerUnit, dtype: int = TensorProto.INT32) -> str:
    """Int32 output codes of accumulators ``acc`` (..., O; int32 or int64 ``dtype``) by the
    unit's static threshold table: at most :data:`SUM_LIMIT` thresholds per channel by one
    broadcast comparison summed over the passed thresholds' code steps; longer tables by one read
    of :func:`lookup_table` where it fits :data:`LUT_LIMIT_BYTES`, else :func:`_search_codes`.
    UserError when the engine builds the table per batch. ``acc`` may have any leading shape
    (channels last)."""
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
    const, limit = (i64, 2**63) if wide else (i32, INT32_LIMIT)
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
    code0 = i32(g, values[:, 0].numpy(), "code0")
    if count == 0:
        return g.op("Add", [g.op("Cast", [g.op("Mul", [acc, const(g, 0)])], to=TensorProto.INT32), code0], "codes")
    out = code0
    expanded = g.op("Unsqueeze", [acc, i64(g, [-1])], "acc5")  # (..., O, 1)
    table = const(g, t.numpy(), "thresholds")  # (O, K)
    step = i32(g, steps.numpy(), "steps")
    passed = g.op("Cast", [g.op("GreaterOrEqual", [expanded, table], "passed")], to=TensorProto.INT32)
    part = g.op("ReduceSum", [g.op("Mul", [passed, step]), i64(g, [-1])], "codesum", keepdims=0)
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
    out = g.op("Gather", [int_const(g, codes, codes.dtype, "lut"), index], "codes", axis=0)
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
    limit, dtype, const = (2**63, np.int64, i64) if wide else (INT32_LIMIT, np.int32, i32)
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
        q = g.op("Add", [g.op("Mul", [g.op("Cast", [passed], to=TensorProto.INT32), i32(g, step)]),
                         i32(g, (base * width).numpy())], "pos")
    else:
        c, m, shift, _ = guess
        n = (thresholds != SENTINEL).sum(dim=1).numpy().astype(np.float32)
        accf = g.op("Cast", [acc], "accf", to=TensorProto.FLOAT)
        u = g.op("Floor", [g.op("Mul", [g.op("Sub", [accf, g.const(c, "guess_c")]), g.const(m, "guess_m")])])
        u = g.op("Min", [g.op("Max", [g.op("Add", [u, g.const(shift, "guess_s")]), g.const(0.0)]), g.const(n, "n")])
        q = g.op("Add", [g.op("Cast", [u], to=TensorProto.INT32), i32(g, (base * width).numpy())], "pos")
        step = 2**rounds
    while step > 1:
        step //= 2
        shifted = int_const(g, flat[step - 1 : step - 1 + channels * width].numpy(), dtype, "thresholds")
        passed = g.op("Cast", [g.op("GreaterOrEqual", [acc, g.op("Gather", [shifted, q], "probe", axis=0)])],
                      "passed", to=TensorProto.INT32)
        q = g.op("Add", [q, passed if step == 1 else g.op("Mul", [passed, i32(g, step)])], "pos")
    valid = thresholds != SENTINEL
    if bool(((values[:, 1:] - values[:, :-1] == 1) | ~valid).all()):  # a staircase of unit steps: v_0 + pos
        return g.op("Add", [q, i32(g, (values[:, 0] - base * width).numpy(), "code0")], "codes")
    # o * (width + 1) + pos = q + o: the code tables are one entry wider than the threshold tables
    index = g.op("Add", [q, i32(g, base.numpy())], "index")
    return g.op("Gather", [i32(g, codes.reshape(-1).numpy(), "codes"), index], "codes", axis=0)


def maxpool_codes(g: Graph, a: str) -> str:
    """2x2 max pooling, stride 2, of int32 NHWC codes: ``Max`` of the four stride-2 slices."""
    big = 2**62
    parts = [slice_axis(g, slice_axis(g, a, 1, dy, big, 2), 2, dx, big, 2) for dy in (0, 1) for dx in (0, 1)]
    return g.op("Max", parts, "pool")


def _up2_axis(g: Graph, c: str, axis: int) -> str:
    """``4 x`` bilinear x2 along ``axis`` (1: H or 2: W) of int32 NHWC codes, as ``unet.integer.kernels``:
    ``even = c[j-1] + 3 c[j]``, ``odd = 3 c[j] + c[j+1]``, the edge repeated."""
    big = 2**62
    three = g.op("Mul", [c, i32(g, 3)])
    prev = g.op("Concat", [slice_axis(g, c, axis, 0, 1), slice_axis(g, c, axis, 0, -1)], axis=axis)
    nxt = g.op("Concat", [slice_axis(g, c, axis, 1, big), slice_axis(g, c, axis, -1, big)], axis=axis)
    even = g.op("Unsqueeze", [g.op("Add", [prev, three]), i64(g, [axis + 1])])
    odd = g.op("Unsqueeze", [g.op("Add", [three, nxt]), i64(g, [axis + 1])])
    pairs = g.op("Concat", [even, odd], axis=axis + 1)
    if axis == 2:  # (B, H, W, 2, C) -> (B, H, 2W, C)
        return g.op("Reshape", [pairs, g.op("Concat", [i64(g, [0, 0, -1]), slice_axis(g, g.op("Shape", [c]), 0, 3, 4)],
                                              axis=0)], "up_w")
    # (B, H, 2, W, C) -> (B, 2H, W, C)
    return g.op("Reshape", [pairs, g.op("Concat", [i64(g, [0, -1]), slice_axis(g, g.op("Shape", [c]), 0, 2, 4)],
                                        axis=0)], "up_h")


def upsample_codes(g: Graph, a: str) -> str:
    """Bilinear x2 (align_corners False) of int32 NHWC codes times 16 (``upsample2_codes``)."""
    return _up2_axis(g, _up2_axis(g, a, 1), 2)
