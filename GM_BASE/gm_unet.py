#!/usr/bin/env python
"""Train or evaluate the quantized U-Net on spinal cord grey matter (GM, SCGM challenge) MRI.

Run from an experiment folder: ``python gm_unet.py -f config.yaml -t UNET``. The GM recipe
(SPEC §5): NIfTI volumes read directly, axial slices resampled to 0.25 mm, 200x200 centre
crop, elastic + affine augmentation, per-image standardisation, -soft Dice loss, cosine LR.
"""

import sys

from unet.interrupts import quiet_interrupts

if __name__ == "__main__":
    quiet_interrupts()  # a Ctrl-C while torch loads: one line, no traceback
    from unet.cli import train

    sys.exit(train("GM", __file__))
