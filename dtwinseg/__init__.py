"""dtwinseg: reasoning segmentation through Digital Twins (DTwinSeger and beyond)."""

from dtwinseg.twin import DigitalTwin, Granularity, TwinObject

__version__ = "0.1.0"
__all__ = ["DigitalTwin", "Granularity", "TwinObject", "__version__"]
