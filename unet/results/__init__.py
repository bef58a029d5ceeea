"""The paper's table from run folders: Dice against precision and memory (``python -m unet.results``).

For the experiments under each FOLDER (``em``, ``gm``, ``nih``) it reads the run folders
(``log_output_dir/experiment_name`` as each config resolves, with the same ``-o`` overrides
the sweep got) and writes, into the output folder (default: the first FOLDER):

* ``results.md`` and ``results.csv``: one row per experiment in the paper's order (full
  precision, FIXED by decreasing weight then activation bits, INT, BNN, Ternary) with the
  formats, best val Dice (mean ± std over slices) and its epoch, the Dice change against the
  full-precision row, the other metrics and the weight memory;
* ``dice_vs_bits.png``, ``dice_vs_memory.png``, ``training_curves.png``, ``overlays_<folder>.png``
  (the best model of every experiment on the same validation slices) and
  ``weights_<experiment>.png`` (per-layer float and quantized weight distributions).

Weight memory (:func:`unet.memory.model_memory`, re-exported here): every quantized
convolution's weights at their storage width (FIXED sign-magnitude ``1 + i + f`` bits, INT
``i + 1``, BNN 1, ternary 2 plus one 32-bit scale per output channel); the float first block
and head, all biases and BatchNorm at 32 bits.
``MiB = bits / 2^23``; the reduction factor is ``32 * params / bits`` (the same model in float).

The package: :mod:`.runs` reads the run folders, :mod:`unet.memory` counts the weight memory,
:mod:`.tables` writes the Markdown and CSV tables, :mod:`.figures` draws every figure and
:mod:`.cli` is the command.
"""

from ..memory import PAPER_BASE_CHANNELS, Memory, model_memory
from .cli import build_parser, main, write_results
from .figures import (
    overlay_samples,
    plot_dice_vs_bits,
    plot_dice_vs_memory,
    plot_overlays,
    plot_training_curves,
    write_weight_grids,
)
from .runs import Result, best_row, collect_results, read_metrics_csv, read_result
from .tables import (
    CSV_FIELDS,
    OTHER_METRICS,
    compact_table,
    dataset_labels,
    describe_data,
    formats,
    markdown_table,
    memory_note,
    quantizer_label,
    results_csv,
    runs_note,
    settings_sentence,
    short_label,
    spec_label,
    table_rows,
    weight_bits,
)

__all__ = [
    "CSV_FIELDS", "OTHER_METRICS", "PAPER_BASE_CHANNELS", "Memory", "Result", "best_row", "build_parser",
    "compact_table", "runs_note",
    "collect_results", "dataset_labels", "describe_data", "formats", "main", "markdown_table", "memory_note",
    "model_memory", "overlay_samples", "plot_dice_vs_bits", "plot_dice_vs_memory", "plot_overlays",
    "plot_training_curves", "quantizer_label", "read_metrics_csv", "read_result", "results_csv",
    "settings_sentence", "short_label", "spec_label", "table_rows", "weight_bits", "write_results",
    "write_weight_grids",
]
