"""Integer engine: a bit-true integer reference of a trained quantized U-Net.

``IntegerUNet.from_model(model)`` gives an object with the float model's contract (a float
(B, 1, H, W) image batch in, probabilities out) whose quantized part runs on integer codes:

* **Codes.** Every activation quantizer's output ``q`` is held as int64 codes ``c`` with
  ``q = c * s`` and a fixed scale per format (:mod:`.formats`): ``2^-f`` for FIXED nearest,
  ``2^min(e_min, -f)`` for FIXED pow2 (``e_min``: the spec's ``pow2_min_exponent``, or -24),
  1 for INT (the fake-quant INT values are integers) and binary.
* **Convolutions** of units with quantized weights multiply activation codes by weight codes
  (``QuantSpec.codes``) with exact integer accumulation (:mod:`.kernels`): int64, or torch's
  float32 / float64 convolution on floats holding the integers where the layer's bound
  ``max|a| * max_c sum|w_c|`` (every partial sum, any order) proves it below 2^24 / 2^53.
* **BatchNorm + the next activation quantizer** (and the bias and the activation function
  before BatchNorm, ReLU, tanh or ternarytanh) run as per-channel integer thresholds on the
  accumulator, FINN style (:mod:`.thresholds`). Thresholds rather than HAWQ-V3's dyadic
  multiplier + shift because (1) they reproduce the fake-quant model bit for bit: they are
  the exact switch points of its own float32 unit function, float32 rounding included, where
  a multiplier + shift approximates ``gamma / sqrt(var + eps)`` and differs at rounding ties;
  (2) they fold everything between the accumulator and the code, including a negative
  gamma (the channel's comparisons flip), tanh / ternarytanh (monotone), pow2's non-uniform
  levels and the non-monotone nearest *wrap* quantizer (Q3.3: 15.99 -> 8.0; a per-channel
  code table after the comparators handles every piece). Their cost is one comparator per
  level: cheap for the paper's activations (Q6.0: 127 levels), large for Q8.8 (2^17 levels),
  whose tables are built only over the accumulator range that inputs reach.
* **Max pooling** of codes is exact; **bilinear x2 upsampling** (weights 1/4, 3/4 per axis)
  is exact on codes with two more fractional bits per axis (scale ``s / 16``); the
  concatenated skip connection is brought to the same scale by a shift (x16).
* **INT** (min-max per tensor): the range is the fake-quant model's, the min and max of the
  whole BatchNorm output of the batch; the engine gets it exactly from each channel's
  extreme accumulators and rebuilds that layer's thresholds per batch. On hardware that means
  a reduction over the whole layer output before any code can be emitted (the output must be
  buffered; no streaming) and per-batch thresholds; an image's codes depend on the other
  images of its batch.

What stays float: the first block (its convolutions have float weights; its output
quantizer produces the first codes), the head convolution and the sigmoid, and Ternary
models entirely apart from their weights: TWN keeps float activations, so the engine runs
their convolutions multiplier-free on the ternary codes {-1, 0, 1} and multiplies each
output channel by its float scale ``alpha_c`` (not bit-exact: float summation order).
Normal models have no integer model (:class:`~unet.errors.UserError`).

The above is the reference path (``fast=False``). By default the engine takes its fast exact
path (:mod:`.fast`): float32 codes, oneDNN's int8 convolution with float32 sums proven or
checked exact (:mod:`.onednn`; else int8 limb GEMMs), and the unit's own float32 function on
the exact accumulators in one pass, with the same codes as the thresholds give.
"""

from .compare import code_mismatches, reference_codes
from .engine import IntegerUNet
from .formats import DEFAULT_POW2_MIN_EXPONENT, CodeFormat, code_format

__all__ = [
    "DEFAULT_POW2_MIN_EXPONENT",
    "CodeFormat",
    "IntegerUNet",
    "code_format",
    "code_mismatches",
    "reference_codes",
]
