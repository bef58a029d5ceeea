"""``python -m unet.predict``: see :mod:`unet.predict.cli`."""

import sys

from unet.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())
