#!/usr/bin/env python
"""Train or evaluate the quantized U-Net on spinal cord grey matter (GM, SCGM challenge) MRI.

Run from an experiment folder: ``python gm_unet.py -f config.yaml -t UNET``. The GM recipe
(SPEC §5): NIfTI volumes read directly, axial slices resampled to 0.25 mm, 200x200 centre
crop, elastic + affine augmentation, per-image standardisation, -soft Dice loss, cosine LR.
"""

import sys
from pathlib import Path

from unet.cli import main
from unet.recipes import gm_recipe

RECIPE = gm_recipe(
    base_config=Path(__file__).resolve().parent / "config.yaml",
    prepare_command="python preprocessing/gm_prepare.py --synthetic (or point dataset_path at the SCGM "
    "training release; check it with python preprocessing/gm_prepare.py --release DIR)",
)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
