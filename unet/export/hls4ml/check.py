"""The C simulation of the compiled hls4ml project against the integer engine, code for code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import DataError, UserError
from ...integer.engine import IntegerUNet
from ...integer.formats import codes_to_values

IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


def fit(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``image`` (H0, W0) cropped to its centre ``hw`` where larger, zero-padded evenly (extra
    pixel bottom / right) where smaller."""
    h, w = hw
    out = np.zeros((h, w), dtype=np.float32)
    ih, iw = image.shape
    sy, sx = max(0, (ih - h) // 2), max(0, (iw - w) // 2)
    crop = image[sy:sy + h, sx:sx + w]
    oy, ox = (h - crop.shape[0]) // 2, (w - crop.shape[1]) // 2
    out[oy:oy + crop.shape[0], ox:ox + crop.shape[1]] = crop
    return out


def load_images(path: Path, hw: tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    """Images of ``path`` (a PNG / TIFF file or a folder of them, sorted) as the predictor reads
    EM images (grey levels scaled to uint8, then / 255), each :func:`fit` to ``hw``; (N, 1, H, W)
    float32 and the slice names."""
    from ...imageio import read_image
    from ...transforms import EMInput

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"--check folder {path} holds no .png / .tif / .tiff image")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"--check {path} does not exist; give an image or a folder of images")
    images, names = [], []
    for f in files:
        for k, s in enumerate(EMInput()(read_image(f).pixels)):
            images.append(fit(s, hw))
            names.append(f"{f.name}[{k}]")
    return torch.from_numpy(np.stack(images))[:, None], names


def adversarial_inputs(hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Inputs that drive the codes to their extremes: loud noise (std 50), a +-100 checkerboard,
    a constant 1e4 image and a constant -1e4 image (4, 1, H, W)."""
    g = torch.Generator().manual_seed(seed)
    h, w = hw
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = ((yy + xx) % 2 * 2 - 1).float() * 100
    return torch.stack([50 * torch.randn(h, w, generator=g), board, torch.full((h, w), 1e4),
                        torch.full((h, w), -1e4)])[:, None]


def _channels_last(codes: torch.Tensor) -> np.ndarray:
    return codes.permute(0, 2, 3, 1).reshape(codes.shape[0], -1).numpy()


def compare(hls_model, engine: IntegerUNet, x: torch.Tensor, layers: bool) -> dict:
    """Run the C simulation on images ``x`` (N, 1, H, W) and compare with the engine.

    Returns ``{"images": N, "codes": output codes compared, "differing": {layer: count}}`` (the
    last unit always; every unit with ``layers``) and ``mask_differing``: pixels whose mask
    (host head on the HLS codes, > 0.5) differs from the engine's."""
    codes = engine.forward_codes(x)
    first = np.ascontiguousarray(_channels_last(codes["enc1.1"]).astype(np.float64))
    names = [k for k in codes if not k.startswith("enc1")]
    last = names[-1]
    differing: dict[str, int] = {}
    if layers:
        hls_model.compile = lambda: None  # trace() recompiles; the project was compiled with tracing on
        _, trace = hls_model.trace(first)
        for name in names:
            got = np.asarray(trace[name.replace(".", "_")]).reshape(len(x), -1)
            differing[name] = int(np.count_nonzero(got != _channels_last(codes[name])))
    out = np.asarray(hls_model.predict(first)).reshape(len(x), -1)
    differing[last] = int(np.count_nonzero(out != _channels_last(codes[last])))
    shape = codes[last].shape
    hls_codes = torch.from_numpy(out.astype(np.int64)).reshape(shape[0], shape[2], shape[3], shape[1])
    with torch.no_grad():
        head = engine.model.head(codes_to_values(hls_codes.permute(0, 3, 1, 2).contiguous(), engine.fmt))
        mask = torch.sigmoid(head) > 0.5
    mask_diff = int((mask != (engine(x) > 0.5)).sum())
    return {"images": len(x), "codes": int(out.size), "differing": differing, "mask_differing": mask_diff}


class CheckFailed(UserError):
    """The C simulation's codes differ from the integer engine's."""


def check_or_raise(result: dict) -> None:
    """CheckFailed listing the differing counts per layer unless every code is equal."""
    bad = {k: v for k, v in result["differing"].items() if v}
    if bad or result["mask_differing"]:
        per_layer = ", ".join(f"{k}: {v}" for k, v in bad.items())
        raise CheckFailed(f"C simulation differs from the integer engine on {result['images']} images: "
                          f"{per_layer or 'codes equal'}; mask pixels differing: {result['mask_differing']}")
