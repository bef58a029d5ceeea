"""Sliding-window prediction with Gaussian blending (the nnU-Net scheme), pure numpy.

A slice of any size is covered by windows of the training crop size: along an axis of
length ``n >= s`` (window ``s``) the windows start at ``round(i (n - s) / (k - 1))``,
``i = 0 .. k - 1``, with ``k = ceil((n - s) / (step s)) + 1`` (one window at 0 when
``n == s``), so neighbours overlap by at least ``1 - step`` of the window. A slice smaller
than the window is padded with 0 to the window size, ``(s - n) // 2`` before and the rest
after (as the readers' centre crop/pad placed training images), and the padding is cut off
again. Each window's prediction is weighted by a Gaussian importance map (sigma
``window / 8`` per axis, maximum 1, floored at its smallest positive value) and the weighted
sum is divided by the summed weights; a slice covered by one window gets the window's
prediction unchanged.

:func:`sliding_window_stream` batches windows across slices (and across files when the
caller streams several), so that ``--batch-size`` counts windows whatever the slice sizes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np

#: A batch (B, 1, h, w) float32 -> probabilities (B, 1, h, w).
Forward = Callable[[np.ndarray], np.ndarray]

#: nnU-Net's sigma of the importance map, as a fraction of the window.
SIGMA_SCALE = 1.0 / 8.0


def window_starts(length: int, window: int, step: float = 0.5) -> list[int]:
    """Start offsets of the windows along one axis of ``length >= window`` pixels.

    ``k = ceil((length - window) / (step * window)) + 1`` windows, evenly spread from 0 to
    ``length - window`` (rounded); ``[0]`` when ``length == window``. ``0 < step <= 1``.
    """
    if window < 1 or length < window:
        raise ValueError(f"need 1 <= window <= length, got window {window}, length {length}")
    if not 0.0 < step <= 1.0:
        raise ValueError(f"step must be in (0, 1], got {step}")
    span = length - window
    if span == 0:
        return [0]
    count = math.ceil(span / (step * window)) + 1
    return [int(round(i * span / (count - 1))) for i in range(count)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """The (h, w) float32 importance map: ``exp(-d_y^2 / (2 s_y^2) - d_x^2 / (2 s_x^2))`` with
    ``d`` the distance to the window's centre ``((h - 1) / 2, (w - 1) / 2)`` (symmetric, so
    mirroring a window mirrors its weights) and ``s = sigma_scale * size``; values below the
    smallest positive one are raised to it, so no pixel gets weight 0."""
    axes = []
    for size in window:
        d = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
        sigma = max(sigma_scale * size, 1e-6)
        axes.append(np.exp(-(d**2) / (2.0 * sigma**2)))
    weights = np.outer(axes[0], axes[1])
    weights /= weights.max()
    positive = weights[weights > 0]
    floor = positive.min() if positive.size else 1.0
    return np.maximum(weights, floor).astype(np.float32)


def pad_to_window(image: np.ndarray, window: Sequence[int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad an (H, W) image with 0 to at least the window size; return it and the (top, left)
    offset of the image inside. An axis already >= the window is not padded."""
    pads = []
    for n, s in zip(image.shape, window, strict=True):
        extra = max(0, int(s) - n)
        pads.append((extra // 2, extra - extra // 2))
    if not any(a or b for a, b in pads):
        return image, (0, 0)
    return np.pad(image, pads, mode="constant", constant_values=0), (pads[0][0], pads[1][0])


def tile_boxes(shape: Sequence[int], window: Sequence[int], step: float = 0.5) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the windows covering a slice of ``shape`` (>= window)."""
    ys = window_starts(int(shape[0]), int(window[0]), step)
    xs = window_starts(int(shape[1]), int(window[1]), step)
    return [(y, x) for y in ys for x in xs]


def mirror_tta(forward: Forward) -> Forward:
    """Test-time mirroring: the mean of ``forward`` over the identity and the flips along W,
    H and both, each prediction flipped back (4 forward passes per batch)."""

    def mirrored(batch: np.ndarray) -> np.ndarray:
        total = forward(batch).astype(np.float32, copy=True)
        for axes in ((3,), (2,), (2, 3)):
            total += np.flip(forward(np.ascontiguousarray(np.flip(batch, axes))), axes)
        return total / np.float32(4.0)

    return mirrored


class _Slice:
    """One slice in flight: its padded image, its windows and the blending accumulators."""

    def __init__(self, key: Hashable, image: np.ndarray, window: tuple[int, int], step: float) -> None:
        self.key = key
        self.shape = image.shape
        self.padded, self.offset = pad_to_window(np.asarray(image, dtype=np.float32), window)
        self.boxes = tile_boxes(self.padded.shape, window, step)
        self.remaining = len(self.boxes)
        self.single = len(self.boxes) == 1
        self.total = None if self.single else np.zeros(self.padded.shape, dtype=np.float32)
        self.weight = None if self.single else np.zeros(self.padded.shape, dtype=np.float32)
        self.result: np.ndarray | None = None

    def add(self, y: int, x: int, prediction: np.ndarray, importance: np.ndarray) -> None:
        if self.single:
            self.result = prediction
        else:
            h, w = prediction.shape
            self.total[y:y + h, x:x + w] += prediction * importance
            self.weight[y:y + h, x:x + w] += importance
        self.remaining -= 1

    def finish(self) -> np.ndarray:
        blended = self.result if self.single else self.total / self.weight
        top, left = self.offset
        return np.ascontiguousarray(blended[top:top + self.shape[0], left:left + self.shape[1]], dtype=np.float32)


def sliding_window_stream(
    slices: Iterable[tuple[Hashable, np.ndarray]],
    forward: Forward,
    window: Sequence[int],
    step: float = 0.5,
    batch_size: int = 1,
    window_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    on_batch: Callable[[list[Hashable], float], None] | None = None,
) -> Iterator[tuple[Hashable, np.ndarray]]:
    """Predict a stream of ``(key, slice (H, W))``; yield ``(key, probability (H, W) float32)``
    in input order, each as soon as all of its windows have been predicted.

    Windows are cut in order (slice by slice, row-major corners) and sent to ``forward`` in
    batches of ``batch_size`` (the last one may be smaller), a batch spanning slices when one
    slice has fewer windows left. ``window_transform`` (e.g. per-window normalization) is
    applied to each padded window before batching. ``on_batch(keys, seconds)`` is told the
    slice key of every window in a batch and the seconds ``forward`` took, for accounting.
    Slices are read from ``slices`` only when windows are needed, so a long stream of files
    holds at most the slices of one batch in memory besides those being read.
    """
    window = (int(window[0]), int(window[1]))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    importance = gaussian_importance(window)
    pending: deque[_Slice] = deque()
    batch: list[tuple[_Slice, int, int, np.ndarray]] = []

    def run() -> None:
        inputs = np.stack([item[3] for item in batch])[:, np.newaxis]
        started = time.perf_counter()
        outputs = np.asarray(forward(inputs), dtype=np.float32)
        if on_batch is not None:
            on_batch([item[0].key for item in batch], time.perf_counter() - started)
        for (target, y, x, _), prediction in zip(batch, outputs, strict=True):
            target.add(y, x, prediction[0], importance)
        batch.clear()

    def ready() -> Iterator[tuple[Hashable, np.ndarray]]:
        while pending and pending[0].remaining == 0:
            done = pending.popleft()
            yield done.key, done.finish()

    for key, image in slices:
        item = _Slice(key, image, window, step)
        pending.append(item)
        for y, x in item.boxes:
            patch = item.padded[y:y + window[0], x:x + window[1]]
            batch.append((item, y, x, patch if window_transform is None else window_transform(patch)))
            if len(batch) == batch_size:
                run()
                yield from ready()
    if batch:
        run()
    yield from ready()


def sliding_window(image: np.ndarray, forward: Forward, window: Sequence[int], step: float = 0.5,
                   batch_size: int = 1, window_transform: Callable[[np.ndarray], np.ndarray] | None = None
                   ) -> np.ndarray:
    """The blended probability (H, W) of one slice (:func:`sliding_window_stream` of one item)."""
    ((_, prob),) = list(sliding_window_stream([(0, image)], forward, window, step, batch_size, window_transform))
    return prob


__all__ = ["Forward", "gaussian_importance", "mirror_tta", "pad_to_window", "sliding_window",
           "sliding_window_stream", "tile_boxes", "window_starts"]
