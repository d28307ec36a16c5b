"""dtwinseg: reasoning segmentation through Digital Twins (DTwinSeger and beyond).

The library lives in this folder; the workflow packages of the source tree (``training/``,
``data_builders/``, ``eval/``, ``workflows/``, ``cli/``) install under this one namespace
(``dtwinseg.training`` ...), so dtwinseg adds no generic top-level import names to a user's environment.
"""

from pathlib import Path as _Path

# Installed wheels hold those packages inside this folder (pyproject's package-dir mapping). In a source
# checkout (PYTHONPATH, a copied tree) they are siblings of this folder: extend the package path to the
# checkout root so ``dtwinseg.training`` resolves to ``training/`` there, as the editable install maps it.
_root = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "training").is_dir() and (_root / "training" / "__init__.py").is_file() \
        and (_root / "pyproject.toml").is_file():
    __path__.append(str(_root))  # noqa: F821 (a package's __path__)

from dtwinseg.twin import DigitalTwin, Granularity, TwinObject  # noqa: E402

__version__ = "0.1.0"
__all__ = ["DigitalTwin", "Granularity", "TwinObject", "__version__"]
