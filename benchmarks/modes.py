"""The quantization modes every benchmark compares, as config overrides on the EM base config.

Shared by bench_training.py, bench_speed.py and bench_integer.py (import it as ``modes`` when the
benchmark runs as a script: the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

#: name -> (label, ``-o key=value`` overrides on top of ``EM_BASE/config.yaml``)
MODES: dict[str, tuple[str, list[str]]] = {
    "normal": ("Normal (float)", ["quantization=Normal"]),
    "fixed_nearest": ("FIXED nearest a Q6.0 / w Q0.4", [
        "quantization=FIXED", "activation_i_width=6", "activation_f_width=0",
        "weight_i_width=0", "weight_f_width=4", "fixed_rounding=nearest"]),
    "fixed_pow2": ("FIXED pow2 a Q6.0 / w Q0.4", [
        "quantization=FIXED", "activation_i_width=6", "activation_f_width=0",
        "weight_i_width=0", "weight_f_width=4", "fixed_rounding=pow2"]),
    "int": ("INT a 8 / w 8 bits", ["quantization=INT", "activation_i_width=8", "weight_i_width=8"]),
    "bnn": ("BNN (sign)", ["quantization=BNN"]),
    "ternary": ("Ternary (TWN weights)", ["quantization=Ternary"]),
}
