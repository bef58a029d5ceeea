"""The integer engine's fast exact path: exact int8 convolutions and direct requantization.

Between quantized units the fast path holds activation codes as float32 tensors in
channels_last layout (every code of a format the path accepts is an integer below 2^24, so
float32 holds it exactly; pooling stays exact on them, see
:func:`~unet.integer.kernels.maxpool2_codes`; the decoder's upsampling and skip shift are formed
where the convolution reads them, :class:`~unet.integer.onednn.ChannelBlocks`).

* **Convolution**, first choice: oneDNN's u8 x s8 direct convolution with float32 sums, its
  exactness proven or checked per limb (:mod:`.onednn`). Where that is unavailable or a sum is
  not exact in float32 (and for weights beyond ``[-256, 254]``): :class:`Int8Conv`, codes split
  into signed 7-bit limbs ``a = sum_i l_i 128^i`` (low limbs in ``[0, 128)``, the top limb in
  ``[-128, 128)``), weights likewise; every (activation limb, weight limb) pair is one
  ``torch._int_mm`` int8 x int8 -> int32 GEMM over an im2col matrix of the NHWC codes. A limb
  GEMM's partial sums are bounded by ``128 * 128 * 9 C`` (checked below 2^31 at build time), so
  int32 cannot overflow; the limb products are combined in int32 when the batch's bound
  ``max|a| * max_c sum|w_c|`` is below 2^31, else in int64. The result is the exact integer
  accumulator, whatever the kernel of the reference path.
* **Requantization** (:func:`requantize`, :func:`requantize_accumulator`): the unit's own float32
  function ``Q(BN(act(fl32(s acc + b))))`` evaluated directly on the exact accumulators, the
  very function whose switch points the reference path's threshold tables hold
  (:meth:`ThresholdRequantizer.unit_values` / :meth:`~ThresholdRequantizer.codes_of`): equal
  codes. With ReLU (or none), BatchNorm and a rule that rounds each value alone, everything
  after the convolution is one native pass (:func:`unit_pass`: the limb sums, ``s acc + b``,
  ReLU, BatchNorm, the rule and the code scale, bit-equal to the modules in turn).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from quantizer import native
from quantizer.fusion import OnePass, one_pass, relu_batchnorm_quantize

from .formats import CodeFormat
from .onednn import Accumulator, first_step
from .thresholds import ThresholdRequantizer

#: Largest float32 code magnitude the fast path accepts (exact integers in float32).
FLOAT32_CODES = 2**24
#: Partial sums of one limb GEMM must stay below this (int32 accumulation).
INT32_LIMIT = 2**31
LIMB_BITS = 7
#: im2col rows per GEMM (bounds the int8 column matrix: rows x 9C x limbs bytes).
ROWS_PER_CHUNK = 1 << 16


def limb_count(max_abs: int) -> int:
    """Number of signed 7-bit limbs that hold every integer of magnitude ``<= max_abs``."""
    count = 1
    while max_abs >= 2 ** (LIMB_BITS * count):
        count += 1
    return count


def split_limbs(x: Tensor, count: int, keep_dtype: bool = False) -> list[Tensor]:
    """Int8 limbs of integer tensor ``x`` (int32 / int64): ``x = sum_i limb_i * 128^i``; low limbs
    in ``[0, 128)``, the top one signed (``|x| < 128^count``). ``keep_dtype``: the limbs in
    ``x``'s dtype (same values), for a caller that converts them while copying."""
    limbs = []
    rest = x
    for _ in range(count - 1):
        limbs.append(rest & ((1 << LIMB_BITS) - 1))
        rest = rest >> LIMB_BITS  # arithmetic shift: floor division
    limbs.append(rest)
    return limbs if keep_dtype else [limb.to(torch.int8) for limb in limbs]


class Int8Conv:
    """Exact 3x3 convolution (zero padding) of integer codes by int8 limb GEMMs.

    ``weights``: int64 codes (O, C, 3, 3). Call with codes (B, C, H, W) held in float32 (or any
    integer dtype) to get the int32 or int64 accumulator as an NHWC tensor (B, H, W, O).
    """

    def __init__(self, weights: Tensor) -> None:
        """Split the weights into int8 limbs, as one (9 C, limbs * O) matrix."""
        out_ch, in_ch = weights.shape[:2]
        self.out_channels, self.in_channels = out_ch, in_ch
        self.weight_sums = int(weights.abs().sum(dim=(1, 2, 3)).max()) if weights.numel() else 0
        self.weight_limbs = limb_count(int(weights.abs().max()) if weights.numel() else 0)
        # rows ordered (dy, dx, c), as the im2col matrix's columns
        rows = weights.permute(2, 3, 1, 0).reshape(9 * in_ch, out_ch)
        self.matrix = torch.cat(split_limbs(rows, self.weight_limbs), dim=1).contiguous()
        if not self.accepts(weights):
            raise ValueError(f"weights {tuple(weights.shape)}: the int8 limb sums could overflow int32")

    @staticmethod
    def accepts(weights: Tensor) -> bool:
        """Whether every int32 sum of the limb GEMMs is proven below 2^31 for these weights: one
        limb GEMM reaches at most ``128 * 128 * 9 C``, the weight limbs of one activation limb
        combined at most ``128 * max_c sum|w_c|``."""
        in_ch = weights.shape[1]
        sums = int(weights.abs().sum(dim=(1, 2, 3)).max()) if weights.numel() else 0
        return 128 * 128 * 9 * in_ch < INT32_LIMIT and 128 * sums < INT32_LIMIT

    def kernel_name(self, act_limbs: int) -> str:
        """Name reported in :meth:`IntegerUNet.kernels_used`: ``int8`` or ``int8xAxW`` limbs."""
        return "int8" if act_limbs == 1 and self.weight_limbs == 1 else f"int8x{act_limbs}x{self.weight_limbs}"

    def __call__(self, a: Tensor, max_abs: int) -> Tensor:
        """Accumulators (B, H, W, O) of codes ``a`` (B, C, H, W) with ``|a| <= max_abs``: int32
        (one limb each), float64 (limb sums below 2^53: exact) or int64."""
        b, c, h, w = a.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        act_limbs = limb_count(max_abs)
        bound = max_abs * self.weight_sums
        if bound < INT32_LIMIT:
            dtype = torch.int32  # every partial and combined sum is below 2^31
        else:
            dtype = torch.float64 if bound < 2**53 else torch.int64  # integers: exact sums
        nhwc = a.permute(0, 2, 3, 1)  # contiguous for channels_last codes
        # zero-padded int8 limbs (B, H + 2, W + 2, C): one conversion pass writes each interior
        padded = [nhwc.new_zeros((b, h + 2, w + 2, c), dtype=torch.int8) for _ in range(act_limbs)]
        if act_limbs == 1:
            padded[0][:, 1:-1, 1:-1].copy_(nhwc)
        else:
            for pad, limb in zip(padded, split_limbs(nhwc.to(torch.int32), act_limbs, keep_dtype=True), strict=True):
                pad[:, 1:-1, 1:-1].copy_(limb)
        out = torch.empty(b, h, w, self.out_channels, dtype=dtype)
        o = self.out_channels
        if b * h * w <= ROWS_PER_CHUNK:
            chunks = [(0, b, 0, h)]
        else:  # per image, whole rows: every chunk of ``out`` is contiguous
            rows = max(1, ROWS_PER_CHUNK // w)
            chunks = [(i, i + 1, y0, min(h, y0 + rows)) for i in range(b) for y0 in range(0, h, rows)]
        for b0, b1, y0, y1 in chunks:
            m = (b1 - b0) * (y1 - y0) * w
            cols = torch.empty(act_limbs * m, 9 * c, dtype=torch.int8)
            for i, limb in enumerate(padded):
                window = limb[b0:b1, y0 : y1 + 2]
                s = window.stride()
                # im2col as a strided view: (b, y, x, dy, dx, c) -> one copy into the GEMM's rows
                view = window.as_strided((b1 - b0, y1 - y0, w, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
                cols[i * m : (i + 1) * m].view(b1 - b0, y1 - y0, w, 3, 3, c).copy_(view)
            if act_limbs == 1 and self.weight_limbs == 1:
                # one GEMM: its exact int32 result is the accumulator, written in place
                torch._int_mm(cols, self.matrix, out=out[b0:b1, y0:y1].view(m, o))
                continue
            prod = torch._int_mm(cols, self.matrix)  # (limbs * M, weight limbs * O), exact int32
            target = out[b0:b1, y0:y1].view(m, o)
            # per activation limb, weight limbs combined in int32: |sum| <= 128 * max_c sum|w_c|
            rows_of = []
            for i in range(act_limbs):
                part = prod[i * m : (i + 1) * m]
                q = part[:, :o]
                for j in range(1, self.weight_limbs):
                    q = torch.add(q, part[:, j * o : (j + 1) * o], alpha=2 ** (LIMB_BITS * j))
                rows_of.append(q)
            # then the activation limbs (Horner, top limb first), in the output's dtype: int32 only
            # below 2^31; each partial result is conv(floor(a / 128^i), w), within the same bound
            if act_limbs == 1:
                target.copy_(rows_of[0])
                continue
            step = 2**LIMB_BITS
            torch.add(rows_of[-2], rows_of[-1].to(dtype), alpha=step, out=target)
            for i in range(act_limbs - 3, -1, -1):
                torch.add(rows_of[i], target, alpha=step, out=target)
        self.last_kernel = self.kernel_name(act_limbs)
        self.last_bound = bound
        return out


@torch.no_grad()
def requantize(requant: ThresholdRequantizer, acc: Tensor, bound: int, folded: bool = False) -> Tensor:
    """Float32 output codes (B, C, H, W, channels_last) of accumulators ``acc`` (B, H, W, C, int32,
    int64, float32 or float64 holding integers) with ``|acc| <= bound``: the unit function of
    :meth:`ThresholdRequantizer.unit_values` and the quantizer of
    :meth:`ThresholdRequantizer.codes_of`, evaluated on every accumulator. ``folded``: ``acc``
    already holds ``fl32(s acc + b)`` (the convolution applied the scale and bias)."""
    scale = requant.acc_scale
    if folded:
        y = acc
    elif bound < FLOAT32_CODES and math.frexp(scale)[0] == 0.5:
        # |acc| < 2^24 and a power-of-two scale: acc * s is exact in float32 and one float32
        # addition rounds s acc + b once, as the float64 sum rounded to float32 does
        # one pass: b + s * acc (s * acc is exact, so a fused multiply-add rounds alike)
        y = torch.add(requant.bias.to(torch.float32), acc, alpha=scale)  # int32 -> float32: exact
    else:
        y = acc.to(torch.float64).mul_(scale).add_(requant.bias).float()
    y = y.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last
    relu = _foldable_relu(requant)
    if requant.fmt.spec.kind != "int" and relu is not None:
        q = relu_batchnorm_quantize(y, relu, requant.bn, requant.fmt.spec)
        if q is not None:  # one pass, bit-equal to the modules in turn
            return float_codes(q, requant.fmt)
    z = requant.bn(requant.act(y))
    if requant.fmt.spec.kind == "int":
        low, high = z.min(), z.max()
        span = high - low
        if torch.isinf(span):
            raise ValueError(f"layer {requant.name}: the INT quantizer's range overflows float32")
        codes = requant.codes_of(z, (low, span))
        return codes.to(torch.float32).contiguous(memory_format=torch.channels_last)
    return float_codes(requant.fmt.spec(z), requant.fmt)


def _foldable_relu(requant: ThresholdRequantizer) -> bool | None:
    """Whether the unit's activation is a ReLU (True) or none (False) before a BatchNorm, the forms
    the fused kernels take; None for any other unit."""
    if not isinstance(requant.bn, nn.BatchNorm2d) or not isinstance(requant.act, (nn.ReLU, nn.Identity)):
        return None
    return isinstance(requant.act, nn.ReLU)


def unit_pass(requant: ThresholdRequantizer) -> OnePass | None:
    """The unit's ``codes(Q(BN(act(y))))`` as one native pass (ReLU or no activation, BatchNorm,
    a rule that rounds each value alone, then the code scale); None where it does not fold."""
    relu = _foldable_relu(requant)
    if relu is None:
        return None
    return one_pass(relu, requant.bn, requant.fmt.spec, "channels_last", code_scale=1.0 / requant.fmt.scale)


@torch.no_grad()
def requantize_accumulator(requant: ThresholdRequantizer, acc: Accumulator, plan: OnePass | None) -> Tensor | None:
    """Float32 output codes (B, C, H, W, channels_last) of the limb-sum accumulators ``acc``
    (:class:`~unet.integer.onednn.Accumulator`), equal to :func:`requantize` on the exact
    accumulators; None when a limb sum is not exact (2^24 or more). With ``plan``
    (:func:`unit_pass`) everything after the convolution is one pass over memory."""
    if plan is None or native.library() is None:  # no plan, or the kernels switched off since
        y = first_step(acc, requant.acc_scale, requant.bias)
        return None if y is None else requantize(requant, y.permute(0, 2, 3, 1), 0, folded=True)
    out = torch.empty_like(acc.parts[0])
    if acc.folded:
        native.relu_bn(acc.parts[0], out, plan.alpha, plan.beta, plan.relu, plan.fused, False, plan.post)
        return out
    exact = native.limbs_unit([part.permute(0, 2, 3, 1) for part in acc.parts], acc.shifts, requant.bias,
                              requant.acc_scale, plan.alpha, plan.beta, plan.relu, plan.fused, plan.post,
                              out.permute(0, 2, 3, 1))
    return out if exact else None


def float_codes(q: Tensor, fmt: CodeFormat) -> Tensor:
    """Float32 codes (channels_last) of quantized float32 values ``q``: ``trunc(q / scale)``, as
    :func:`~unet.integer.formats.values_to_codes` computes in float64 (the scale is a power of
    two, so ``q / scale`` is exact in float32; a pow2 magnitude below the format's smallest
    truncates to 0 alike). May reuse ``q``'s storage."""
    if not q.is_floating_point() or q.dtype != torch.float32:
        q = q.to(torch.float32)
    return q.mul(1.0 / fmt.scale).trunc_().contiguous(memory_format=torch.channels_last)
