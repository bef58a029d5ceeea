#!/usr/bin/env python
"""Train or evaluate the quantized U-Net on ISBI 2012 electron microscopy (EM) data.

Run from an experiment folder: ``python em_unet.py -f config.yaml -t UNET``. The EM recipe
(SPEC §5): prepared 200x200 PNG pairs, no online augmentation, raw [0, 1] intensities,
0.5 BCE + 0.5 Dice loss, x0.1 LR steps, and the ISBI 2012 Rand and pixel errors.
"""

import sys

from unet.interrupts import quiet_interrupts

if __name__ == "__main__":
    quiet_interrupts()  # a Ctrl-C while torch loads: one line, no traceback
    from unet.cli import train

    sys.exit(train("EM", __file__))
