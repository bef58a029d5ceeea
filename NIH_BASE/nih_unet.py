#!/usr/bin/env python
"""Train or evaluate the quantized U-Net on NIH pancreas CT.

Run from an experiment folder: ``python nih_unet.py -f config.yaml -t UNET``. The NIH recipe
(SPEC §5): prepared 112x176 PNG pairs centred on the pancreas, no augmentation, raw [0, 1]
intensities, -soft Dice loss, cosine LR.
"""

import sys

from unet.interrupts import quiet_interrupts

if __name__ == "__main__":
    quiet_interrupts()  # a Ctrl-C while torch loads: one line, no traceback
    from unet.cli import train

    sys.exit(train("NIH", __file__))
