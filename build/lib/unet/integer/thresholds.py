"""BatchNorm + activation quantizer as per-channel integer thresholds on the accumulator.

One quantized unit computes ``code = Q(BN(act(s * acc + b))) / scale_out`` from the integer
accumulator ``acc`` of its convolution (``s``: product of the input and weight scales, ``b``:
the float bias). For a fixed channel that is a function of one integer, and a step function:

* ``z(acc) = BN(act(s acc + b))`` is monotone in ``acc`` (``s > 0``; ReLU, tanh and
  ternarytanh are non-decreasing; BN multiplies by ``gamma / sqrt(var + eps)``): increasing
  when ``gamma >= 0``, decreasing otherwise (the channel's ``orientation``; an oriented
  accumulator ``o acc`` always makes ``z`` non-decreasing);
* the quantizer ``Q`` is a step function of ``z`` (not monotone for nearest *wrap* with
  fractional bits, whose fraction keeps cycling above ``2^i``, and with non-uniform levels
  for pow2).

So each channel is described by sorted integer thresholds ``t_1 <= ... <= t_K`` and codes
``v_0 ... v_K``: ``code = v[#{k : o acc >= t_k}]`` (FINN's MultiThreshold followed by a
per-channel lookup; for a monotone quantizer ``v`` is a staircase). The thresholds are the
exact switch points of the trained model's own float32 unit function: for every level ``p``
of a monotone *piece index* ``P(z)`` that refines the quantizer's steps, ``t_p`` is the
smallest oriented accumulator with ``P(z(acc)) >= p``, found by bisection over integers, and
``z`` is evaluated by the model's own activation and BatchNorm modules. Where the float model
computes ``s acc`` exactly, the engine therefore reproduces its codes bit for bit, float32
rounding ties included.

The piece index is the code itself for monotone formats, the code's rank for pow2 (sparse
codes), and ``sign(z) (round(|z| 2^f) + floor|z|)`` for nearest wrap with ``f > 0`` (both
terms are non-decreasing in ``|z|`` and together determine the wrapped code).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .formats import CodeFormat, values_to_codes

SENTINEL = torch.iinfo(torch.int64).max
#: A table is built over the whole reachable accumulator range when it has at most this many
#: thresholds (all channels); wider formats (Q8.8, nearest wrap with fractions) build it over
#: the accumulator range that batches reach, growing it as new batches need.
STATIC_TABLE_LIMIT = 1 << 18
#: Largest table built at all (all channels); beyond it the engine refuses the layer.
TABLE_LIMIT = 1 << 24


class TableTooLarge(ValueError):
    """The threshold table of a layer would exceed :data:`TABLE_LIMIT` entries."""


class ThresholdRequantizer:
    """Accumulator codes (int64) -> output activation codes (int64), per channel, by thresholds.

    ``bias`` (C,) float32, ``acc_scale``: value of accumulator code 1; ``act`` and ``bn``: the
    model's own activation and BatchNorm (eval) modules; ``fmt``: the output code format;
    ``bound`` (C,): largest ``|acc|`` of each channel (the table covers ``[-bound, bound]`` when
    that is small enough). INT formats depend on each batch's min and max (the fake-quant
    model's per-tensor min-max): their table is rebuilt for every batch.
    """

    def __init__(
        self, name: str, bias: Tensor, acc_scale: float, act: nn.Module, bn: nn.BatchNorm2d,
        fmt: CodeFormat, bound: Tensor,
    ) -> None:
        self.name = name
        self.bias = bias.detach().to(torch.float64)
        self.acc_scale = float(acc_scale)
        self.act = act
        self.bn = bn
        self.fmt = fmt
        self.orientation = torch.where(bn.weight.detach() < 0, -1, 1).to(torch.int64)
        self.bound = bound.to(torch.int64)
        self.table: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # lo, hi, thresholds, codes
        self.static = False
        if fmt.spec.kind != "int":
            lo, hi = -self.bound, self.bound
            if self._breakpoint_count(lo, hi, None) <= STATIC_TABLE_LIMIT:
                self.table = self._build(lo, hi, None)
                self.static = True

    # --- the float32 unit function of the model, evaluated on integer accumulators ----------

    @torch.no_grad()
    def unit_values(self, acc: Tensor) -> Tensor:
        """``z = BN(act(fl32(s acc + b)))`` for accumulators ``acc`` (C, N), as the model
        computes it: ``s acc + b`` rounded once to float32 (the channels_last convolution
        adds its bias once to the exact sum), then the model's own modules on a contiguous
        (1, C, N, 1) tensor (their result per element does not depend on the layout)."""
        y = (acc.to(torch.float64) * self.acc_scale + self.bias[:, None]).float()
        z = self.bn(self.act(y[None, :, :, None].contiguous()))
        return z[0, :, :, 0]

    def codes_of(self, z: Tensor, int_range: tuple[Tensor, Tensor] | None) -> Tensor:
        """Output codes of unit values ``z``: the spec's own quantizer, or for INT the
        min-max formula with the batch's ``(lo, span)`` in the fake-quant model's order."""
        if self.fmt.spec.kind == "int":
            lo, span = int_range
            if span <= 0:
                return torch.zeros(z.shape, dtype=torch.int64)
            q = (z - lo).div_(span).mul_(2.0**self.fmt.spec.i_bits).floor_()
            return q.sub_(2.0 ** (self.fmt.spec.i_bits - 1)).to(torch.int64)
        return values_to_codes(self.fmt.spec(z.clone()), self.fmt)

    def pieces_of(self, z: Tensor, codes: Tensor) -> Tensor:
        """Monotone piece index ``P(z)`` (int64) that refines the quantizer's steps."""
        if self.fmt.levels is not None:
            return torch.searchsorted(self.fmt.levels, codes)
        if self.fmt.wrap_fraction:
            a = z.abs().double().clamp_max_(2.0**40)
            p = torch.round(a * 2.0**self.fmt.spec.f_bits) + torch.floor(a)
            return (torch.sign(z).double() * p).to(torch.int64)
        return codes

    def _pieces_at(self, oriented: Tensor, int_range) -> tuple[Tensor, Tensor]:
        z = self.unit_values(oriented * self.orientation[:, None])
        codes = self.codes_of(z, int_range)
        return self.pieces_of(z, codes), codes

    # --- tables --------------------------------------------------------------------------

    def _breakpoint_count(self, lo: Tensor, hi: Tensor, int_range) -> int:
        ends = torch.stack([lo, hi], dim=1)
        p, _ = self._pieces_at(ends, int_range)
        return int((p[:, 1] - p[:, 0]).sum())

    @torch.no_grad()
    def _build(self, lo: Tensor, hi: Tensor, int_range) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Thresholds and codes covering oriented accumulators ``[lo_c, hi_c]`` of each channel."""
        channels = lo.numel()
        ends = torch.stack([lo, hi], dim=1)
        p_ends, c_ends = self._pieces_at(ends, int_range)
        n = p_ends[:, 1] - p_ends[:, 0]  # breakpoints per channel (P is non-decreasing)
        k = int(n.max()) if channels else 0
        if channels * k > TABLE_LIMIT:
            raise TableTooLarge(
                f"layer {self.name}: {self.fmt.spec} needs {channels * k} thresholds over the "
                f"accumulator range this input reaches (limit {TABLE_LIMIT})"
            )
        step = torch.arange(1, k + 1, dtype=torch.int64)
        valid = step[None, :] <= n[:, None]
        target = p_ends[:, :1] + step[None, :]
        low = lo[:, None].expand(channels, k).clone()
        high = torch.where(valid, hi[:, None], low)
        # bisection: smallest oriented accumulator in [low, high] whose piece reaches target
        while True:
            active = low < high
            if not bool(active.any()):
                break
            mid = (low >> 1) + (high >> 1) + (low & high & 1)  # floor((low + high) / 2), no overflow
            p, _ = self._pieces_at(mid, int_range)
            reached = p >= target
            high = torch.where(active & reached, mid, high)
            low = torch.where(active & ~reached, mid + 1, low)
        codes = torch.empty(channels, k + 1, dtype=torch.int64)
        codes[:, 0] = c_ends[:, 0]
        if k:
            _, codes[:, 1:] = self._pieces_at(low, int_range)
        # drop thresholds that do not change the code, and the unused ones
        keep = valid & (codes[:, 1:] != codes[:, :-1])
        thresholds = torch.where(keep, low, SENTINEL)
        order = torch.argsort(thresholds, dim=1, stable=True)
        thresholds = thresholds.gather(1, order)
        kept = codes[:, 1:].gather(1, order)
        width = int(keep.sum(dim=1).max()) if k else 0
        values = torch.cat([codes[:, :1], kept[:, :width]], dim=1)
        return lo.clone(), hi.clone(), thresholds[:, :width].contiguous(), values.contiguous()

    def thresholds(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """``(orientation, thresholds, codes)`` of the current table (None before the first
        batch of a batch-dependent one); unused threshold slots hold ``2^63 - 1``."""
        if self.table is None:
            return None
        return self.orientation, self.table[2], self.table[3]

    # --- application ----------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, acc: Tensor, int_range: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """Codes (B, C, H, W) of accumulators ``acc`` (B, C, H, W), int64 only. INT formats
        take the range from ``acc`` (the model's rule) unless ``int_range = (min, max - min)``
        is given (for diagnosis)."""
        b, c, h, w = acc.shape
        flat = (acc.transpose(0, 1).reshape(c, -1) * self.orientation[:, None]).contiguous()
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
        if self.fmt.spec.kind == "int":
            table = self._build(lo, hi, int_range if int_range is not None else self._int_range(lo, hi))
        else:
            table = self.table
            if table is None or bool((lo < table[0]).any() or (hi > table[1]).any()):
                if table is not None:  # grow the batch-driven table: it only ever widens
                    lo, hi = torch.minimum(lo, table[0]), torch.maximum(hi, table[1])
                table = self.table = self._build(lo, hi, None)
        _, _, thresholds, values = table
        index = torch.searchsorted(thresholds, flat, right=True)
        out = values.gather(1, index)
        return out.reshape(c, b, h, w).transpose(0, 1)

    def _int_range(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """The fake-quant model's per-tensor ``min``, ``max - min`` of the BN output, from the
        per-channel extreme accumulators (z is monotone in each channel)."""
        z = self.unit_values(torch.stack([lo, hi], dim=1) * self.orientation[:, None])
        low, high = z.min(), z.max()
        span = high - low
        if torch.isinf(span):
            raise ValueError(f"layer {self.name}: the INT quantizer's range overflows float32")
        return low, span
