"""The quantizers' string options, each defined once: :class:`Kind`, :class:`Rounding`, :class:`Overflow`.

Each is a ``str`` enum, so a member equals its value (``Kind.FIXED == "fixed"``): configs, YAML,
checkpoints and existing comparisons keep their plain strings.
"""

from __future__ import annotations

from enum import Enum


class StringOption(str, Enum):
    """A string option: prints and formats as its value (the base of every string enum of the
    project: these three, the trainer's modes, the sweep's statuses)."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def values(cls) -> tuple[str, ...]:
        """The accepted strings, in definition order."""
        return tuple(member.value for member in cls)


class Kind(StringOption):
    """What a :class:`quantizer.modules.QuantSpec` quantizes to."""

    FLOAT = "float"  # identity
    FIXED = "fixed"  # Qi.f fixed point (rounding, overflow)
    INT = "int"  # min-max integer of i_bits bits
    BINARY = "binary"  # -1 / +1
    TERNARY = "ternary"  # TWN, weights only


class Rounding(StringOption):
    """How FIXED rounds: to the 2^-f grid, or to powers of two (the original EM code)."""

    NEAREST = "nearest"
    POW2 = "pow2"


class Overflow(StringOption):
    """What FIXED nearest rounding does past its range: the original wrap-around, or clamp."""

    WRAP = "wrap"
    SATURATE = "saturate"


__all__ = ["Kind", "Overflow", "Rounding", "StringOption"]
