"""Test doubles shared by tests/ and benchmarks/ (never imported by the library itself): e.g. a
random-weight SAM whose decoder returns planted, realistic masks (``planted_sam``)."""
