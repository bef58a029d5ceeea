"""Export of a trained U-Net: ``python -m unet.export RUN_or_CHECKPOINT --format packed|qonnx|onnx``.

* :mod:`unet.export.packed`: the packed file (quantized weights bit-packed at their storage
  width) and its reader, :func:`read_packed`; its size, :func:`packed_size_bytes`, is
  :mod:`unet.memory`'s (re-exported here);
* ``unet.export.qonnx`` / ``unet.export.onnx``: QONNX and plain ONNX graphs (imported lazily).
"""

from ..memory import packed_size_bytes
from .packed import read_packed, write_packed

__all__ = ["packed_size_bytes", "read_packed", "write_packed"]
