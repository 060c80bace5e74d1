"""An example hts engine plug-in: the ``local-threshold`` nucleus engine (see README.md)."""

from hts_engine_example.engine import LocalThresholdEngine, LocalThresholdParams

__all__ = ["LocalThresholdEngine", "LocalThresholdParams"]
__version__ = "0.1.0"
