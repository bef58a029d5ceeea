"""The datasets' base configs shipped inside the package (``em.yaml``, ``gm.yaml``, ``nih.yaml``).

Each is a copy of ``<DATASET>_BASE/config.yaml`` (a test keeps them equal); see
:mod:`unet.recipes` for which of the two a command reads.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

#: The datasets with a base config, in the paper's order.
DATASETS = ("EM", "GM", "NIH")

_FILES = ExitStack()
atexit.register(_FILES.close)


def packaged_config(dataset: str) -> Path:
    """The path of ``dataset``'s base config shipped in the package (``unet/configs/em.yaml``).

    Read through :mod:`importlib.resources`, so it also works from a wheel or a zip. Raises
    KeyError for a dataset other than EM, GM and NIH.
    """
    if dataset.upper() not in DATASETS:
        raise KeyError(dataset)
    resource = resources.files(__name__).joinpath(f"{dataset.lower()}.yaml")
    return Path(_FILES.enter_context(resources.as_file(resource)))
