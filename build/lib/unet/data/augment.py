"""Online augmentation of the GM recipe (SPEC §5): elastic deformation and a random affine.

Pure functions on 2-D numpy arrays. All randomness comes from the explicit
``rng: numpy.random.Generator`` argument, so the same generator state gives the same output.
Image and mask always receive the *same* geometric transform (the original drew a different
elastic field for each; we use one field for both, SPEC §9).

Conventions: arrays are indexed ``(row, col) = (y, x)``; distances are in pixels of the
array given (the GM reader resamples to 0.25 mm first, so one pixel = 0.25 mm there).
Images come back as float32; masks come back with their input dtype and values 0/1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["augment_gm", "elastic_deform", "random_affine"]


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` and ``mask`` are 2-D arrays of the same shape."""
    if image.ndim != 2 or mask.shape != image.shape:
        raise ValueError(
            f"expected a 2-D image and a mask of the same shape, got {image.shape} and {mask.shape}"
        )


def elastic_deform(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    alpha_range: tuple[float, float] = (28.0, 30.0),
    sigma_range: tuple[float, float] = (3.5, 4.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Elastic deformation (Simard et al. 2003) with one displacement field for image and mask.

    Draws ``alpha ~ U(alpha_range)`` and ``sigma ~ U(sigma_range)``, then for each axis
    ``d = alpha * G_sigma * u`` with ``u ~ U(-1, 1)`` i.i.d. per pixel and ``G_sigma`` a Gaussian
    filter of standard deviation ``sigma`` pixels (zero outside the array, so displacements
    fade towards the border). ``alpha`` is in pixels per unit of the smoothed noise; with the
    defaults the displacement has a standard deviation of about 1 pixel.

    Output pixel ``(y, x)`` samples the input at ``(y + d_y(y, x), x + d_x(y, x))``: bilinear
    (order 1) for both arrays, 0 outside the input. The mask is interpolated as float and
    re-binarized: foreground where the interpolated value is ``>= 0.5``.

    Returns ``(image float32, mask)`` with the mask in its input dtype, values 0/1.
    """
    _check_pair(image, mask)
    alpha = float(rng.uniform(*alpha_range))
    sigma = float(rng.uniform(*sigma_range))
    shape = image.shape
    noise = rng.uniform(-1.0, 1.0, size=(2, *shape)).astype(np.float32)
    dy = ndimage.gaussian_filter(noise[0], sigma, mode="constant", cval=0.0) * alpha
    dx = ndimage.gaussian_filter(noise[1], sigma, mode="constant", cval=0.0) * alpha
    yy, xx = np.meshgrid(
        np.arange(shape[0], dtype=np.float32), np.arange(shape[1], dtype=np.float32), indexing="ij"
    )
    coords = np.stack((yy + dy, xx + dx))  # one coordinate grid, reused for both arrays
    out_image = ndimage.map_coordinates(
        image.astype(np.float32, copy=False), coords, order=1, mode="constant", cval=0.0
    )
    warped_mask = ndimage.map_coordinates(
        (mask > 0).astype(np.float32), coords, order=1, mode="constant", cval=0.0
    )
    out_mask = (warped_mask >= 0.5).astype(mask.dtype)
    return out_image.astype(np.float32, copy=False), out_mask


def affine_matrix(
    shape: tuple[int, int], angle_deg: float, scale: float, shift_yx: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(matrix, offset)`` for :func:`scipy.ndimage.affine_transform`.

    The forward map rotates by ``angle_deg`` (counter-clockwise in the displayed image, i.e.
    with rows pointing down), scales by ``scale`` about the array centre
    ``c = ((H - 1) / 2, (W - 1) / 2)`` and then shifts by ``shift_yx`` pixels:
    ``out = c + scale * R (in - c) + t``. scipy needs the inverse, output -> input:
    ``in = M out + offset`` with ``M = R^-1 / scale`` and ``offset = c - M (c + t)``.
    """
    theta = math.radians(angle_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    # Rotation in (y, x) coordinates with y pointing down: counter-clockwise on screen.
    rot = np.array([[cos, -sin], [sin, cos]])
    inv = rot.T / scale
    centre = np.array([(shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0])
    offset = centre - inv @ (centre + np.asarray(shift_yx, dtype=float))
    return inv, offset


def random_affine(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    degrees: float = 4.6,
    scale: tuple[float, float] = (0.98, 1.02),
    translate: tuple[float, float] = (0.03, 0.03),
) -> tuple[np.ndarray, np.ndarray]:
    """Random rotation, isotropic scaling and translation, the same for image and mask.

    Draws ``angle ~ U(-degrees, degrees)`` (degrees), ``s ~ U(scale)`` and a shift
    ``t_x ~ U(-translate[0] * W, translate[0] * W)``, ``t_y ~ U(-translate[1] * H,
    translate[1] * H)`` in pixels (``translate`` is a fraction of the width and height, in
    torchvision's order (horizontal, vertical); the shift is not rounded). The transform is
    ``out = c + s R (in - c) + t`` about the array centre ``c`` (see :func:`affine_matrix`).
    Nearest-neighbour interpolation for both arrays, 0 outside the input, so the mask stays
    binary and aligned with the image.

    Returns ``(image float32, mask)`` with the mask in its input dtype, values 0/1.
    """
    _check_pair(image, mask)
    angle = float(rng.uniform(-degrees, degrees))
    s = float(rng.uniform(*scale))
    height, width = image.shape
    t_x = float(rng.uniform(-translate[0] * width, translate[0] * width))
    t_y = float(rng.uniform(-translate[1] * height, translate[1] * height))
    matrix, offset = affine_matrix(image.shape, angle, s, (t_y, t_x))
    out_image = ndimage.affine_transform(
        image.astype(np.float32, copy=False),
        matrix,
        offset=offset,
        order=0,
        mode="constant",
        cval=0.0,
    )
    out_mask = ndimage.affine_transform(
        (mask > 0).astype(np.uint8), matrix, offset=offset, order=0, mode="constant", cval=0
    )
    return out_image.astype(np.float32, copy=False), out_mask.astype(mask.dtype, copy=False)


def augment_gm(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    p_elastic: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """The GM training augmentation of SPEC §5: elastic with probability ``p_elastic``, then affine.

    Elastic: alpha in [28, 30], sigma in [3.5, 4.0] pixels (:func:`elastic_deform`); affine:
    +-4.6 degrees, scale 0.98-1.02, translation up to 3% of each side, nearest, fill 0
    (:func:`random_affine`). Exactly one uniform draw decides the elastic step, so the number
    of draws, and hence the output for a given ``rng`` state, is deterministic.
    """
    if rng.random() < p_elastic:
        image, mask = elastic_deform(image, mask, rng)
    return random_affine(image, mask, rng)
