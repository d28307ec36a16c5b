"""Reasoning formats: one module per format (prompt, training target, parser, budget), registered by name.

See :mod:`dtwinseg.formats.base` for the contract (:class:`ReasoningFormat`, defaults in
:class:`FormatBase`). Importing this package registers the built-in formats (``select``, ``sftdt``,
``score``, ``compact``).
"""

from dtwinseg.formats.base import (
    DEFAULT_LOSS_WEIGHTS,
    FORMAT_FILE,
    UNWEIGHTED_LOSS,
    Completion,
    Decoded,
    FormatBase,
    FormatConfig,
    LossWeights,
    ReasoningFormat,
    Target,
    VerdictPath,
    available_formats,
    build_format,
    check_same_format,
    format_differences,
    load_format,
    read_format_spec,
    register_format,
    save_format,
)
from dtwinseg.formats.compact import CompactFormat
from dtwinseg.formats.score import ScoreFormat, overlap_scores
from dtwinseg.formats.select import SelectFormat
from dtwinseg.formats.sftdt import SFTDTFormat

__all__ = [
    "DEFAULT_LOSS_WEIGHTS", "UNWEIGHTED_LOSS", "LossWeights", "FORMAT_FILE", "CompactFormat", "Completion", "Decoded",
    "FormatBase", "FormatConfig", "ReasoningFormat", "SFTDTFormat", "ScoreFormat", "SelectFormat", "Target",
    "VerdictPath", "available_formats", "build_format", "check_same_format", "format_differences", "load_format",
    "overlap_scores", "read_format_spec", "register_format", "save_format",
]
