"""Builders shared by the test modules (test modules import these, never each other).

- :mod:`.commands`: the repository root and a runner for the project's commands;
- :mod:`.experiments`: tiny experiment folders, tiny datasets, and the trainer run in or out of
  this process;
- :mod:`.equality`: the comparisons of tensors and arrays (bit-equal, equal up to the sign of
  zero, element by element);
- :mod:`.models`: small U-Nets trained a few steps so that weights and BatchNorm statistics
  have moved off their initial values;
- :mod:`.quantizer_cases`: the specs, sample tensors and short training runs with which the
  fast quantizer code is compared against the plain rules.
"""
