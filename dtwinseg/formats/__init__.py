"""Reasoning formats: one module per format (prompt, training target, parser, budget), registered by name.

See :mod:`dtwinseg.formats.base` for the contract. Importing this package registers the built-in formats.
"""

from dtwinseg.formats.base import (
    FORMAT_FILE,
    Completion,
    Decoded,
    FormatConfig,
    ReasoningFormat,
    Target,
    available_formats,
    build_format,
    check_same_format,
    format_differences,
    load_format,
    register_format,
    save_format,
)

__all__ = [
    "FORMAT_FILE", "Completion", "Decoded", "FormatConfig", "ReasoningFormat", "Target", "available_formats",
    "build_format", "check_same_format", "format_differences", "load_format", "register_format", "save_format",
]
