"""The integer engine's direct int8 convolution: oneDNN's u8 x s8 convolution with exact float32 sums.

PyTorch ships oneDNN's quantized convolution (``torch.ops.onednn.qconv2d_pointwise``, the
operator its x86 int8 inference uses): unsigned 8-bit inputs ``u`` with a zero point ``z``,
signed 8-bit weights, the products summed in int32 and written as float32,
``out = s_c sum (u - z) w`` (VNNI / AMX-INT8 where the CPU has them, no im2col). Every sum
below 2^24 in magnitude is an exact float32, so:

* **Weights** (:class:`OneDnnConv`): codes in ``[-128, 127]`` are the int8 weights themselves
  ("direct"); codes in ``[-256, 254]`` are split ``w = w1 + w2`` (``w1 = floor(w / 2)``, ``w2 =
  w - w1``, both in ``[-128, 127]``) and the input is given twice, ``[a, a]`` against ``[w1,
  w2]``, so one convolution still sums ``a w`` ("halves", the pow2 weights' +-240). Wider
  weights are not taken (:meth:`OneDnnConv.accepts`).
* **Activations** (:meth:`OneDnnConv.plan`): the batch's codes ``a`` in ``[lo, hi]`` are cut
  into byte limbs ``a = sum_i 256^i l_i``: low limbs unsigned, the top limb
  ``floor(a / 256^(L-1))`` with the smallest zero point ``z`` that puts ``l + z`` in 0..255
  (oneDNN subtracts it exactly, padding included). One limb when the range fits a byte.
* **Exactness**: limb ``i`` sums at most ``|l_i| S`` (``S`` the largest per-channel sum of
  ``|w|`` over the int8 weights), and its bytes before the zero point is removed at most
  ``255 S``, both proven below 2^31, so oneDNN's int32 sums cannot overflow;
  each limb's float32 result is an exact integer exactly when it is below 2^24 in magnitude
  (a rounded one would be at least 2^24). The consumer (:func:`first_step`, or the fused
  unit pass of :mod:`.fast`) checks every part while it combines them in float64, as the
  reference does (``(acc s + b).float()``), and on a part at 2^24 or more returns None: the
  engine then takes the int8 limb GEMMs of :mod:`.fast` for that unit and batch.
* With one limb whose bound is proven below 2^24 and a power-of-two ``s``, the unit's first
  float32 step ``fl32(s acc + b)`` is folded into the convolution (``s acc`` is exact and the
  one addition rounds as in :func:`~unet.integer.fast.requantize`).

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

from .kernels import upsample2_codes

#: Float32 sums are exact integers below this magnitude.
FLOAT32_EXACT = 2**24
#: oneDNN sums each limb's products in int32.
INT32_LIMIT = 2**31
#: Bits of an activation limb: oneDNN's unsigned 8-bit input.
LIMB_BITS = 8
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
        for low, high, w_max, scale in ((-300, 300, 254, 2.0**-7), (-20, 100, 127, 0.3)):
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
class CodeBlock:
    """Integer codes ``codes * mult`` (float32 B C H W, channels_last, the fast path's: ``mult`` a
    power of two, the products integers below 2^24; or int64 codes), or with ``upsampled`` the codes of
    :func:`~unet.integer.kernels.upsample2_codes` of ``codes`` (16 x the bilinear x2
    upsampling, (B, C, 2 H, 2 W); ``mult`` 1)."""

    codes: Tensor
    mult: float = 1.0
    upsampled: bool = False

    @property
    def shape(self) -> tuple[int, int, int, int]:
        b, c, h, w = self.codes.shape
        return (b, c, 2 * h, 2 * w) if self.upsampled else (b, c, h, w)

    def tensor(self) -> Tensor:
        """The block's codes as one float32 tensor (channels_last)."""
        if self.upsampled:
            return upsample2_codes(self.codes)
        return self.codes * self.mult if self.mult != 1 else self.codes

    def code_range(self) -> tuple[int, int]:
        """(min, max) of the block's codes; for an upsampled block the bounds ``16 min``, ``16 max``
        of its input (the interpolation stays within them; at most a limb more, never too few)."""
        if self.upsampled:
            low, high = code_range(self.codes)
            return 16 * low, 16 * high
        return code_range(self.codes, self.mult)


@dataclass(frozen=True)
class ChannelBlocks:
    """Integer codes given as channel blocks ``cat([block.tensor() ...], dim=1)``, not yet
    joined: the decoder's upsampled codes and its skip scaled to match reach the convolution
    without an upsampled, scaled or concatenated copy in memory."""

    blocks: tuple[CodeBlock, ...]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, sum C_i, H, W) of the joined codes."""
        b, _, h, w = self.blocks[0].shape
        return b, sum(block.shape[1] for block in self.blocks), h, w

    def joined(self) -> Tensor:
        """The codes as one tensor (channels_last)."""
        return torch.cat([block.tensor() for block in self.blocks], dim=1)

    def code_range(self) -> tuple[int, int]:
        """(min, max) of the joined codes (:meth:`CodeBlock.code_range`), without joining them."""
        ranges = [block.code_range() for block in self.blocks]
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
    """One activation limb: ``floor(a / 2^shift)``, kept to its low :data:`LIMB_BITS` bits unless
    ``top``, given to the convolution as ``limb + zero_point``; ``bound``: the largest magnitude of
    its sum."""

    shift: int
    top: bool
    zero_point: int
    bound: int


class OneDnnConv:
    """Exact 3x3 convolution (zero padding) of integer codes by oneDNN's int8 convolution.

    ``weights``: int64 codes (O, C, 3, 3) within ``[-256, 254]``; ``scale``, ``bias`` (O,): the
    unit's accumulator scale and float32 conv bias (folded in where that is exact). Call with
    float32 codes (B, C, H, W, channels_last) and their range to get an :class:`Accumulator`.
    """

    def __init__(self, weights: Tensor, scale: float, bias: Tensor) -> None:
        """Form the int8 weights (direct or halves) and let oneDNN pack them."""
        if not self.accepts(weights):
            raise ValueError(f"weights {tuple(weights.shape)}: codes outside [-256, 254] have no int8 form here")
        self.out_channels, self.in_channels = weights.shape[:2]
        self.halves = bool(weights.numel()) and not (int(weights.min()) >= -128 and int(weights.max()) <= 127)
        if self.halves:
            first = weights >> 1  # w = first + second, both halves within int8
            int8 = torch.cat([first, weights - first], dim=1)
        else:
            int8 = weights
        sums = int8.abs().sum(dim=(1, 2, 3))
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
        """Whether the weight codes have an int8 form (all within ``[-256, 254]``)."""
        return not weights.numel() or (int(weights.min()) >= -256 and int(weights.max()) <= 254)

    @staticmethod
    def _zero_point(low: int, high: int) -> int | None:
        """Smallest zero point putting the limb's bytes ``l + z`` in 0..255."""
        z = max(0, -low)
        return z if high + z <= 255 else None

    def plan(self, low: int, high: int) -> list[Limb] | None:
        """The limbs of codes in ``[low, high]``, lowest first; None when a limb's int32 sum could
        overflow (its value, or the sum of its bytes before the zero point is removed)."""
        bits = LIMB_BITS
        count = 1
        while True:
            shift = bits * (count - 1)
            top_low, top_high = low >> shift, high >> shift
            z = self._zero_point(top_low, top_high)
            if z is not None:
                break
            count += 1
        limbs = [Limb(bits * i, False, 0, (2**bits - 1) * self.weight_sum) for i in range(count - 1)]
        limbs.append(Limb(shift, True, z, max(-top_low, top_high) * self.weight_sum))
        # also the raw byte sums, before oneDNN removes the zero point: 255 S
        raw = (2**bits - 1) * self.weight_sum
        return limbs if raw < INT32_LIMIT and all(limb.bound < INT32_LIMIT for limb in limbs) else None

    def _bytes(self, codes: ChannelBlocks, limbs: list[Limb]) -> list[Tensor]:
        """Each limb's uint8 input (B, C or 2 C, H, W, channels_last)."""
        b, c, h, w = codes.shape
        outs = [torch.empty((b, 2 * c if self.halves else c, h, w), dtype=torch.uint8,
                            memory_format=torch.channels_last) for _ in limbs]
        if all(native.applies(block.codes) and block.codes.is_contiguous(memory_format=torch.channels_last)
               for block in codes.blocks):
            shifts = [limb.shift for limb in limbs]
            bits = [None if limb.top else LIMB_BITS for limb in limbs]
            zero_points = [limb.zero_point for limb in limbs]
            offset = 0
            for block in codes.blocks:
                second = c + offset if self.halves else None
                if block.upsampled:
                    native.up2_limbs_u8(block.codes, outs, shifts, bits, zero_points, offset, second)
                else:
                    native.limbs_u8(block.codes, outs, shifts, bits, zero_points, block.mult, offset, second)
                offset += block.shape[1]
            return outs
        joined = codes.joined().to(torch.int32)  # the same bytes, without the kernels (exact integers)
        for limb, out in zip(limbs, outs, strict=True):
            values = joined >> limb.shift
            if not limb.top:
                values &= 2**LIMB_BITS - 1
            for start in (0, c) if self.halves else (0,):
                out[:, start : start + c].copy_(values + limb.zero_point)
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
            codes = ChannelBlocks((CodeBlock(codes.contiguous(memory_format=torch.channels_last)),))
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
    if any(max(-low, high) >= FLOAT32_EXACT for low, high in map(code_range, acc.parts)):
        return None
    total = sum(part.double() * 2.0**shift for part, shift in zip(acc.parts, acc.shifts, strict=True))
    return y.copy_((total * scale + bias.view(1, -1, 1, 1)).float())
