"""``python -m unet.results``: see :mod:`unet.results`."""

import sys

from .cli import main

sys.exit(main())
