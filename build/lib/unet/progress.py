"""Progress bars that stay out of redirected output.

Every tqdm bar of the project asks :func:`bar_disable` whether to show: never when progress was
switched off (a command's ``--no-progress`` flag, or ``UNET_NO_PROGRESS=1`` in the environment,
which subprocesses inherit), else tqdm's ``disable=None``: a bar only when its stream is a
terminal. Log lines and ``train.log`` do not depend on it.
"""

from __future__ import annotations

import os

#: Environment variable that switches every progress bar off when set to anything but "", "0".
ENV_VAR = "UNET_NO_PROGRESS"


def progress_off() -> bool:
    """Whether progress bars are switched off: ``UNET_NO_PROGRESS`` set and not ``""``/``"0"``."""
    return os.environ.get(ENV_VAR, "").strip() not in ("", "0")


def bar_disable(hide: bool = False) -> bool | None:
    """tqdm's ``disable`` argument: True when ``hide`` or progress is off (:func:`progress_off`),
    else None (tqdm then shows the bar only when its stream is a terminal)."""
    return True if hide or progress_off() else None


def switch_off() -> None:
    """Switch progress bars off for this process and the subprocesses it starts (``--no-progress``)."""
    os.environ[ENV_VAR] = "1"
