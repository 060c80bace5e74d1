"""Measurement: per-cell features of one field (:mod:`.field`, built on :mod:`.features`,
:mod:`.texture`, :mod:`.rod`) and per-image statistics (:mod:`.imagestats`).
"""

from hts.compute.measure.field import (
    COMPARTMENTS,
    FEATURE_PREFIXES,
    MeasureOptions,
    column_safe,
    measure_field,
    parent_of,
)

__all__ = ["MeasureOptions", "measure_field", "parent_of", "column_safe", "COMPARTMENTS", "FEATURE_PREFIXES"]
