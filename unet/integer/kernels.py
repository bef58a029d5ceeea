"""Integer kernels of the engine: 3x3 convolution of codes, max pooling, bilinear x2 upsampling.

All functions take and return int64 codes; none forms a fractional value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KERNELS = ("auto", "float32", "float64", "limbs", "int64")
#: Every integer of magnitude below these is exact in the float type (24 / 53-bit significand).
EXACT_FLOAT32 = 2**24
EXACT_FLOAT64 = 2**53
INT64_LIMIT = 2**63


def conv_bound(max_input_code: int, weight_codes: Tensor) -> int:
    """Largest magnitude any partial sum of the convolution can reach.

    ``bound = max|a| * max_c sum_{filter c} |w|``: every partial sum of output channel ``c`` is
    a sum of a subset of the products ``a w`` of its filter, so it is bounded by
    ``max|a| * sum|w_c|`` whatever the summation order (zero padding only removes terms).
    """
    per_channel = weight_codes.abs().sum(dim=(1, 2, 3))
    return int(max_input_code) * int(per_channel.max()) if per_channel.numel() else 0


def choose_kernel(bound: int, max_input_code: int = 0, terms: int = 0) -> str:
    """The fastest exact kernel for partial sums bounded by ``bound``: ``float32`` when
    ``bound < 2^24``, ``float64`` when ``bound < 2^53``, ``limbs`` when one-bit weight limbs
    keep every float64 partial sum exact (``max|a| * terms < 2^52``; ``terms``: products per
    output, C * 9), else ``int64``."""
    if bound < EXACT_FLOAT32:
        return "float32"
    if bound < EXACT_FLOAT64:
        return "float64"
    if 2 * max_input_code * terms < EXACT_FLOAT64:
        return "limbs"
    return "int64"


def check_kernel(kernel: str, bound: int, max_input_code: int = 0, terms: int = 0) -> None:
    """Raise ValueError when ``kernel`` is not proven exact for partial sums up to ``bound``
    (and, for ``limbs``, inputs up to ``max_input_code`` over ``terms`` products)."""
    limit = {"float32": EXACT_FLOAT32, "float64": EXACT_FLOAT64, "limbs": INT64_LIMIT,
             "int64": INT64_LIMIT}.get(kernel)
    if limit is None:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if bound >= limit or (kernel == "limbs" and 2 * max_input_code * terms >= EXACT_FLOAT64):
        raise ValueError(
            f"the {kernel} kernel is not exact here: partial sums may reach {bound} "
            f"(inputs up to {max_input_code} over {terms} products)"
        )


def weight_limbs(w: Tensor, max_input_code: int) -> list[tuple[Tensor, int]]:
    """Split integer weights as ``w = sum_k limb_k 2^shift_k`` so that every limb's float64
    convolution with inputs ``|a| <= max_input_code`` is exact (``max|a| max_c sum|limb_c|
    < 2^53``): low limbs are ``w mod 2^L`` in ``[0, 2^L)`` with ``L`` the widest such width,
    the top limb the signed rest."""
    terms = w[0].numel()
    bits = int(EXACT_FLOAT64 // max(1, max_input_code * terms)).bit_length() - 1
    limbs, shift, rest = [], 0, w
    while max_input_code * int(rest.abs().sum(dim=(1, 2, 3)).max()) >= EXACT_FLOAT64:
        low = torch.remainder(rest, 2**bits)
        limbs.append((low, shift))
        rest = torch.div(rest - low, 2**bits, rounding_mode="floor")
        shift += bits
    limbs.append((rest, shift))
    return limbs


def conv3x3_codes(a: Tensor, w: Tensor, kernel: str, w_float: dict[str, Tensor] | None = None) -> Tensor:
    """``acc[b, o, y, x] = sum_{c, dy, dx} a[b, c, y+dy-1, x+dx-1] * w[o, c, dy, dx]`` (zero padding).

    ``a``: int64 codes (B, C, H, W); ``w``: int64 codes (O, C, 3, 3); returns int64 (B, O, H, W).
    ``kernel``: ``float32`` / ``float64`` run ``torch`` conv2d on floats holding the integers
    (the caller proves the bound, :func:`check_kernel`: then every product and partial sum is
    an exactly representable integer, so the result is exact in any summation order);
    ``int64`` sums the nine shifted int64 matrix products (torch has no int64 conv2d).
    ``w_float`` caches the weight's float copies by dtype name.
    """
    if kernel in ("float32", "float64"):
        dtype = torch.float32 if kernel == "float32" else torch.float64
        wf = w_float.get(kernel) if w_float is not None else None
        if wf is None:
            wf = w.to(dtype).contiguous(memory_format=torch.channels_last)
            if w_float is not None:
                w_float[kernel] = wf
        # channels_last: oneDNN's fast convolution on the CPU (any order of an exact sum is exact)
        out = F.conv2d(a.to(dtype).contiguous(memory_format=torch.channels_last), wf, padding=1)
        return out.to(torch.int64)  # exact integers: the cast truncates nothing
    if kernel == "limbs":
        # linearity: conv(a, w) = sum_k conv(a, limb_k) 2^shift_k, each limb exact in float64
        max_a = int(a.abs().amax()) if a.numel() else 0
        acc = None
        for limb, shift in weight_limbs(w, max_a):
            part = conv3x3_codes(a, limb, "float64") << shift
            acc = part if acc is None else acc.add_(part)
        return acc
    if kernel != "int64":
        raise ValueError(f"kernel must be float32, float64, limbs or int64, got {kernel!r}")
    b, c, h, wd = a.shape
    padded = a.new_zeros(b, c, h + 2, wd + 2)
    padded[:, :, 1:-1, 1:-1] = a
    acc = a.new_zeros(b, w.shape[0], h, wd)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, :, dy : dy + h, dx : dx + wd]
            acc += torch.einsum("bchw,oc->bohw", window, w[:, :, dy, dx])
    return acc


def maxpool2_codes(c: Tensor) -> Tensor:
    """2x2 max pooling, stride 2, of codes (exact: the scale is positive, max commutes with it).

    Integer codes are pooled as int64; float32 codes (the fast path's) by ``max_pool2d``, which
    keeps their channels_last layout (a maximum is exact in any dtype)."""
    if c.is_floating_point():
        return F.max_pool2d(c, 2)
    b, ch, h, w = c.shape
    return c.reshape(b, ch, h // 2, 2, w // 2, 2).amax(dim=(3, 5))


def _up2_axis(c: Tensor, dim: int) -> Tensor:
    """Bilinear x2 along ``dim`` (align_corners False) times 4: ``out[2j] = c[j-1] + 3 c[j]``,
    ``out[2j+1] = 3 c[j] + c[j+1]``, with the edge row repeated (weights 1/4, 3/4; torch clamps
    the source index at the borders, which gives ``4 c[0]`` and ``4 c[n-1]``)."""
    n = c.shape[dim]
    first = c.narrow(dim, 0, 1)
    last = c.narrow(dim, n - 1, 1)
    prev = torch.cat([first, c.narrow(dim, 0, n - 1)], dim=dim)
    nxt = torch.cat([c.narrow(dim, 1, n - 1), last], dim=dim)
    even = prev + 3 * c
    odd = 3 * c + nxt
    out = torch.stack([even, odd], dim=dim + 1)
    shape = list(c.shape)
    shape[dim] = 2 * n
    return out.reshape(shape)


def upsample2_codes(c: Tensor) -> Tensor:
    """Bilinear x2 upsampling (align_corners False) of codes, exactly: returns ``16 x`` the
    interpolated codes, i.e. codes at scale ``s / 16`` (two more fractional bits per axis).

    ``out = (9 a + 3 b + 3 c + d)`` inside, with the border rows/columns repeated; the float
    model's ``F.interpolate`` computes the same weights 0.25/0.75, so ``out * s / 16`` equals
    its result wherever that is exact in float32 (codes below ``2^20``).

    Float32 codes (the fast path's, ``|c| < 2^20``) go through ``F.interpolate`` itself times 16:
    with the weights 1/4 and 3/4 every product and sum is a multiple of 1/16 below 2^20, exact
    in float32, so the result equals the integer formula (and keeps the channels_last layout).
    """
    if c.is_floating_point():
        return F.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False).mul_(16)
    return _up2_axis(_up2_axis(c, 2), 3)
