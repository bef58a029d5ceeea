"""The integer engine's direct int8 convolution: oneDNN's u8 x s8 convolution with exact float32 sums.

PyTorch ships oneDNN's quantized convolution (``torch.ops.onednn.qconv2d_pointwise``, the
operator its x86 int8 inference uses): unsigned 8-bit inputs ``u`` with a zero point ``z``,
signed 8-bit weights, the products summed in int32 and written as float32,
``out = s_c sum (u - z) w`` (VNNI / AMX-INT8 where the CPU has them, no im2col). Every sum
below 2^24 in magnitude is an exact float32, so:

* **Weights** (:class:`OneDnnConv`): codes in ``[-128, 127]`` are the int8 weights themselves
  ("direct"); codes in ``[-256, 255]`` are split ``w = 2 h + o`` (``h = floor(w / 2)`` in
  ``[-128, 127]``, ``o`` in ``{0, 1}``) and the input is given twice, ``[2 a, a]`` against
  ``[h, o]``, so one convolution still sums ``a w`` ("halves", the pow2 weights' +-240).
  Wider weights are not taken (:meth:`OneDnnConv.accepts`).
* **Activations** (:meth:`OneDnnConv.plan`): the batch's codes ``a`` in ``[lo, hi]`` are cut
  into limbs ``a = sum_i 2^(b i) l_i`` (``b = 8``, or 7 for halves so that ``2 l`` fits a
  byte): low limbs unsigned ``b``-bit, the top limb ``floor(a / 2^(b (L-1)))`` with the
  smallest zero point that puts it in 0..255. One limb when the whole range fits a byte.
* **Exactness**: limb ``i`` sums at most ``|l_i| S`` (``S`` = the largest per-channel sum of
  ``|w|``, counted on the int8 weights with their input multiplier), checked below 2^24 for
  every limb, so each convolution is exact in float32. Limb ``i > 0`` is added by oneDNN's sum
  post-op, ``out = 2^(b i) conv_i + out``: a sum of exact integers that is exact whenever its
  result is below 2^24 in magnitude (a rounded result would be at least 2^24). Where the
  proven bound of a partial sum reaches 2^24 the result is checked (one pass); on failure
  :meth:`OneDnnConv.__call__` returns None and the engine takes the int8 limb GEMMs of
  :mod:`.fast` for that unit and batch. The result is the exact accumulator either way.
* With one limb whose bound is below 2^24, the unit's first float32 step
  ``fl32(s acc + b)`` is folded into the convolution (``s`` a power of two: ``s acc`` is exact
  and the one addition rounds as in :func:`~unet.integer.fast.requantize`).

:func:`available` probes the operator once (present, exact on a worst case); without it the
engine keeps the int8 GEMM path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from quantizer import native

#: Float32 sums are exact integers below this magnitude.
FLOAT32_EXACT = 2**24
#: oneDNN sums each limb's products in int32.
INT32_LIMIT = 2**31
_UNIT = [1, 1]
_PAD = [1, 1]


@lru_cache(maxsize=1)
def available() -> bool:
    """Whether oneDNN's int8 convolution runs here and sums exactly: the operator exists and a
    probe with zero points, wide sums and both weight forms equals the int64 convolution."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops, "onednn")
            and hasattr(torch.ops.onednn, "qconv2d_pointwise")):
        return False
    try:
        g = torch.Generator().manual_seed(0)
        for low, high, w_max, scale in ((-300, 300, 255, 2.0**-7), (-20, 100, 127, 0.3)):
            codes = torch.randint(low, high + 1, (2, 40, 9, 11), generator=g).float()
            codes[0, 0, 0, 0], codes[0, 1, 0, 0] = low, high
            weights = torch.randint(-w_max, w_max + 1, (24, 40, 3, 3), generator=g)
            weights[0, 0, 0, 0] = w_max
            bias = torch.randn(24, generator=g)
            conv = OneDnnConv(weights, scale, bias)
            exact = torch.nn.functional.conv2d(codes.double(), weights.double(), padding=1)
            expected = (exact * scale + bias.double().view(1, -1, 1, 1)).float()
            acc = conv(codes.contiguous(memory_format=torch.channels_last), low, high)
            got = None if acc is None else first_step(acc, scale, conv.bias64)
            if got is None or not torch.equal(got, expected):
                return False
        return True
    except (RuntimeError, ValueError, NotImplementedError):
        return False


@dataclass(frozen=True)
class ChannelBlocks:
    """Integer codes given as channel blocks ``cat([t * m for t, m in blocks], dim=1)``, not yet
    joined (float32 B C_i H W, channels_last; ``m`` a power of two, ``t * m`` integers below
    2^24): the decoder's upsampled codes (``t`` in sixteenths, ``m = 16``) and its skip scaled
    to match reach the convolution without a scaled or concatenated copy."""

    blocks: tuple[tuple[Tensor, int], ...]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, sum C_i, H, W) of the joined codes."""
        b, _, h, w = self.blocks[0][0].shape
        return b, sum(t.shape[1] for t, _ in self.blocks), h, w

    def joined(self) -> Tensor:
        """The codes as one tensor (channels_last)."""
        return torch.cat([t * m if m != 1 else t for t, m in self.blocks], dim=1)

    def code_range(self) -> tuple[int, int]:
        """(min, max) of the joined codes, without joining them."""
        ranges = [code_range(t, m) for t, m in self.blocks]
        return min(r[0] for r in ranges), max(r[1] for r in ranges)


def code_range(codes: Tensor, mult: float = 1.0) -> tuple[int, int]:
    """(min, max) of the integer codes ``codes * mult`` (held in a float32 or integer tensor;
    ``mult`` a power of two), one pass over memory."""
    if not codes.numel():
        return 0, 0
    flat = codes.permute(0, 2, 3, 1) if codes.is_contiguous(memory_format=torch.channels_last) else codes
    found = native.minmax(flat) if native.applies(flat) else None
    if found is None:
        low, high = torch.aminmax(flat)
        found = float(low), float(high)
    return int(found[0] * mult), int(found[1] * mult)


@dataclass(frozen=True)
class Limb:
    """One activation limb: ``floor(a / 2^shift)``, kept to ``bits`` bits unless ``top``, given to
    the convolution as ``limb + zero_point``; ``bound``: the largest magnitude of its sum."""

    shift: int
    bits: int
    top: bool
    zero_point: int
    bound: int


class OneDnnConv:
    """Exact 3x3 convolution (zero padding) of integer codes by oneDNN's int8 convolution.

    ``weights``: int64 codes (O, C, 3, 3) within ``[-256, 255]``; ``scale``, ``bias`` (O,): the
    unit's accumulator scale and float32 conv bias (folded in where that is exact). Call with
    float32 codes (B, C, H, W, channels_last) and their range to get an :class:`Accumulator`.
    """

    def __init__(self, weights: Tensor, scale: float, bias: Tensor) -> None:
        """Form the int8 weights (direct or halves) and let oneDNN pack them."""
        if not self.accepts(weights):
            raise ValueError(f"weights {tuple(weights.shape)}: codes outside [-256, 255] have no int8 form here")
        self.out_channels, self.in_channels = weights.shape[:2]
        self.halves = bool(weights.numel()) and not (int(weights.min()) >= -128 and int(weights.max()) <= 127)
        if self.halves:
            high, odd = weights >> 1, weights & 1  # w = 2 high + odd
            int8 = torch.cat([high, odd], dim=1)
            sums = (2 * high.abs() + odd).sum(dim=(1, 2, 3))
        else:
            int8 = weights
            sums = weights.abs().sum(dim=(1, 2, 3))
        self.limb_bits = 7 if self.halves else 8
        self.weight_sum = int(sums.max()) if sums.numel() else 0
        self.weight_bits = int8.to(torch.int8).contiguous(memory_format=torch.channels_last)
        self._ones = torch.ones(self.out_channels)
        self._zero_points = torch.zeros(self.out_channels, dtype=torch.int64)
        self.packed = torch.ops.onednn.qconv_prepack(self.weight_bits, self._ones, 1.0, 0, _UNIT, _PAD, _UNIT, 1,
                                                     None)
        self.scale = float(scale)
        self.scale_is_pow2 = math.frexp(self.scale)[0] == 0.5
        self._step_scale = torch.full((self.out_channels,), self.scale)
        self.bias32 = bias.detach().to(torch.float32).contiguous()
        self.bias64 = self.bias32.to(torch.float64)
        self.last_kernel = ""

    @staticmethod
    def accepts(weights: Tensor) -> bool:
        """Whether the weight codes have an int8 form (all within ``[-256, 255]``)."""
        return not weights.numel() or (int(weights.min()) >= -256 and int(weights.max()) <= 255)

    def _zero_point(self, low: int, high: int) -> int | None:
        """Smallest zero point putting the limb's bytes (``l``, and ``2 l`` for halves) in 0..255."""
        m = 2 if self.halves else 1
        z = max(0, -m * low, -low)
        return z if max(m * high, high) + z <= 255 else None

    def plan(self, low: int, high: int) -> list[Limb] | None:
        """The limbs of codes in ``[low, high]``, lowest first; None when a limb's int32 sum could
        overflow."""
        bits = self.limb_bits
        count = 1
        while True:
            shift = bits * (count - 1)
            top_low, top_high = low >> shift, high >> shift
            z = self._zero_point(top_low, top_high)
            if z is not None:
                break
            count += 1
        limbs = [Limb(bits * i, bits, False, 0, (2**bits - 1) * self.weight_sum) for i in range(count - 1)]
        limbs.append(Limb(shift, bits, True, z, max(-top_low, top_high) * self.weight_sum))
        return limbs if all(limb.bound < INT32_LIMIT for limb in limbs) else None

    def _bytes(self, codes: ChannelBlocks, limbs: list[Limb]) -> list[Tensor]:
        """Each limb's uint8 input (B, C or 2 C, H, W, channels_last)."""
        b, c, h, w = codes.shape
        outs = [torch.empty((b, 2 * c if self.halves else c, h, w), dtype=torch.uint8,
                            memory_format=torch.channels_last) for _ in limbs]
        if all(native.applies(block) and block.is_contiguous(memory_format=torch.channels_last)
               for block, _ in codes.blocks):
            offset = 0
            for block, mult in codes.blocks:
                native.limbs_u8(block, outs, [limb.shift for limb in limbs],
                                [None if limb.top else limb.bits for limb in limbs],
                                [limb.zero_point for limb in limbs], mult, offset, c + offset if self.halves else None)
                offset += block.shape[1]
            return outs
        joined = codes.joined().to(torch.int32)  # the same bytes, without the kernels (exact integers)
        for limb, out in zip(limbs, outs, strict=True):
            values = joined >> limb.shift
            if not limb.top:
                values &= 2**limb.bits - 1
            if self.halves:
                out[:, :c].copy_(values * 2 + limb.zero_point)
                out[:, c:].copy_(values + limb.zero_point)
            else:
                out.copy_(values + limb.zero_point)
        return outs

    def __call__(self, codes: Tensor | ChannelBlocks, low: int, high: int) -> Accumulator | None:
        """The exact accumulators of codes ``codes`` (float32 B C H W, channels_last, or
        :class:`ChannelBlocks`) within ``[low, high]``, as float32 limb sums (see
        :class:`Accumulator`); None when a limb's int32 sum could overflow (the caller then
        computes them another way)."""
        if codes.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {codes.shape[1]}")
        limbs = self.plan(low, high)
        if limbs is None:
            return None
        if isinstance(codes, Tensor):
            codes = ChannelBlocks(((codes.contiguous(memory_format=torch.channels_last), 1),))
        self.last_kernel = f"onednn-u8x{len(limbs)}" + ("-halves" if self.halves else "")
        data = self._bytes(codes, limbs)
        if len(limbs) == 1 and limbs[0].bound < FLOAT32_EXACT and self.scale_is_pow2:
            # |acc| < 2^24 proven and s a power of two: s acc exact, one rounding adds b
            return Accumulator([self._conv(data[0], limbs[0], self._step_scale, self.bias32)], [0], folded=True)
        return Accumulator([self._conv(x, limb, self._ones, None) for x, limb in zip(data, limbs, strict=True)],
                           [limb.shift for limb in limbs], folded=False)

    def _conv(self, data: Tensor, limb: Limb, w_scale: Tensor, bias: Tensor | None) -> Tensor:
        """``w_scale_c sum (data - z) w (+ bias_c)`` in float32 for one limb's bytes."""
        return torch.ops.onednn.qconv2d_pointwise(
            data, 1.0, limb.zero_point, self.packed, w_scale, self._zero_points, bias,
            _UNIT, _PAD, _UNIT, 1, 1.0, 0, torch.float32, "none", [], "")


@dataclass
class Accumulator:
    """A convolution's exact accumulators as float32 limb sums (B, O, H, W, channels_last):
    ``acc = sum_i parts[i] 2^shifts[i]``, each part an integer that is exact where its
    magnitude is below 2^24 (the consumer checks: :func:`first_step`); with ``folded``, the
    single part already holds ``fl32(s acc + b)``, proven exact."""

    parts: list[Tensor]
    shifts: list[int]
    folded: bool


def first_step(acc: Accumulator, scale: float, bias: Tensor) -> Tensor | None:
    """``y = (acc s + b).float()`` computed in float64 (B, O, H, W, channels_last), as
    :func:`~unet.integer.fast.requantize` forms it from an exact accumulator; None when a part
    is 2^24 or more in magnitude (it may have been rounded). ``bias``: float64 (O,)."""
    if acc.folded:
        return acc.parts[0]
    y = torch.empty_like(acc.parts[0])
    if native.applies(acc.parts[0]):
        nhwc = [part.permute(0, 2, 3, 1) for part in acc.parts]
        return y if native.limbs_affine(nhwc, acc.shifts, bias, scale, y.permute(0, 2, 3, 1)) else None
    if any(_max_abs(part) >= FLOAT32_EXACT for part in acc.parts):
        return None
    total = sum(part.double() * 2.0**shift for part, shift in zip(acc.parts, acc.shifts, strict=True))
    return y.copy_((total * scale + bias.view(1, -1, 1, 1)).float())


def _max_abs(t: Tensor) -> int:
    """Largest magnitude in ``t`` (float32 integers), one pass over its memory."""
    flat = t.permute(0, 2, 3, 1) if t.is_contiguous(memory_format=torch.channels_last) else t
    if native.applies(flat):
        found = native.minmax(flat)
        if found is not None:
            return int(max(-found[0], found[1]))
    low, high = torch.aminmax(flat)
    return int(max(-low, high))
