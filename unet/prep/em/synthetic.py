"""The synthetic EM stand-in: cell-like stacks in the public release's format, so the pipeline runs without it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree


def synthetic_em_stack(
    n_slices: int = 30, size: int = 512, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw an EM-like serial-section stack and its labels, both uint8 (n_slices, size, size).

    Lengths scale with ``s = size / 512``. Cells are the 3-D Voronoi cells of Poisson seed
    points (mean spacing about ``78 s`` pixels); slice ``z`` cuts the seed volume at depth
    ``4 s z`` pixels, so a cell persists over many slices and changes gradually (about 87% of
    label pixels agree between neighbouring slices). A pixel is membrane when its in-plane
    distance to the bisector of its two nearest seeds ``c1, c2``,
    ``(d2^2 - d1^2) / (2 |(c2 - c1)_yx|)``, is below half a thickness of ``7 s`` pixels
    (modulated smoothly by up to +-60%). Labels: 0 on membranes, 255 inside cells (about
    77-80% foreground). Image: grey level 168 plus a per-cell offset (sd 14), fine and coarse
    smoothed-noise texture (sd 9 and 7), dark organelle blobs (-70) that persist across
    slices, dark blurred membranes (-115), a slowly varying multiplicative illumination
    gradient and gaussian noise (sd 9), clipped to 0..255. Deterministic for a given ``seed``;
    about 3 s for 30 x 512 x 512 on two cores.
    """
    if n_slices < 1 or size < 16:
        raise ValueError(f"need n_slices >= 1 and size >= 16, got {n_slices}, {size}")
    rng = np.random.default_rng(seed)
    s = size / 512.0
    z_step = 4.0 * s
    cell = 78.0 * s
    margin = 2.0 * cell
    lo = np.array([-margin, -margin, -margin])
    hi = np.array([size + margin, size + margin, (n_slices - 1) * z_step + margin])
    n_seeds = max(8, int(np.prod(hi - lo) / cell**3 * 1.6))
    seeds = rng.uniform(lo, hi, size=(n_seeds, 3))
    tree = cKDTree(seeds)
    cell_level = rng.normal(0.0, 14.0, size=n_seeds)

    shape = (n_slices, size, size)
    waves = _plane_waves(rng, 6, wavelength=(120.0 * s, 300.0 * s))
    organelle_field = _smooth_noise(rng, shape, (1.2, 5.0 * s, 5.0 * s))
    organelles = organelle_field > 2.3

    axis = np.arange(size, dtype=np.float64)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    points = np.stack([yy.ravel(), xx.ravel(), np.zeros(yy.size)], axis=1)
    gy = (yy - size / 2) / size
    gx = (xx - size / 2) / size
    tilt = rng.normal(0.0, 0.12, size=2)
    drift = rng.normal(0.0, 0.03, size=2)

    volume = np.empty(shape, dtype=np.uint8)
    labels = np.empty(shape, dtype=np.uint8)
    for z in range(n_slices):
        points[:, 2] = z * z_step
        dist, idx = tree.query(points, k=2, workers=-1)
        c1, c2 = seeds[idx[:, 0]], seeds[idx[:, 1]]
        gap = np.hypot(c2[:, 0] - c1[:, 0], c2[:, 1] - c1[:, 1])
        to_boundary = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2.0 * np.maximum(gap, 1e-9))
        thickness = 7.0 * s * (1.0 + 0.6 * _wave_field(waves, axis, axis, z * z_step))
        membrane = to_boundary.reshape(size, size) < thickness / 2.0
        labels[z] = np.where(membrane, 0, 255).astype(np.uint8)

        fine = _smooth_noise(rng, (size, size), (1.5 * s + 0.5,) * 2)
        coarse = _smooth_noise(rng, (size, size), (6.0 * s + 1.0,) * 2)
        image = 168.0 + cell_level[idx[:, 0]].reshape(size, size) + 9.0 * fine + 7.0 * coarse
        image -= 70.0 * ndi.gaussian_filter(organelles[z].astype(np.float64), 1.0 * s + 0.3)
        image -= 115.0 * ndi.gaussian_filter(membrane.astype(np.float64), 1.2 * s + 0.3)
        light = 1.0 + (tilt[0] + z * drift[0]) * gy + (tilt[1] + z * drift[1]) * gx
        image = image * light + rng.normal(0.0, 9.0, size=(size, size))
        volume[z] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return volume, labels


def _plane_waves(
    rng: np.random.Generator, n: int, wavelength: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 3-D wave vectors (|k| = 2 pi / wavelength, uniform in the given range)
    and phases, for :func:`_wave_field`."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    k = direction * (2.0 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    return k, rng.uniform(0.0, 2.0 * np.pi, size=n)


def _wave_field(
    waves: tuple[np.ndarray, np.ndarray], y: np.ndarray, x: np.ndarray, depth: float
) -> np.ndarray:
    """Smooth (len(y), len(x)) field in [-1, 1]: mean over the waves of
    ``cos(ky y + kx x + kz depth + phase)``, evaluated separably as
    ``cos(a) cos(b) - sin(a) sin(b)`` with ``a = ky y + kz depth + phase``, ``b = kx x``."""
    k, phase = waves
    out = np.zeros((y.size, x.size))
    for (ky, kx, kz), ph in zip(k, phase, strict=True):
        a = ky * y + (kz * depth + ph)
        b = kx * x
        out += np.outer(np.cos(a), np.cos(b)) - np.outer(np.sin(a), np.sin(b))
    return out / len(phase)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]
) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation (float32)."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-12)


