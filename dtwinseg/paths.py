"""Old import path of the SFTDT reasoning-path format, now :mod:`dtwinseg.formats.sftdt` (kept for
code written against it; import from dtwinseg.formats.sftdt)."""

from dtwinseg.formats.sftdt import *  # noqa: F403
from dtwinseg.formats.sftdt import __all__  # noqa: F401
