"""Synthetic plates for tests, demos and benchmarks.

:func:`synth_field` renders one realistic field of view (nuclear, cytoplasmic
and brightfield channels) with its ground-truth nucleus and cell labels;
:func:`dose_response_layout` lays out a dose-response platemap;
:func:`make_plate` writes a whole plate in one of the acquisition formats hts
reads (ND2, ImageXpress, Opera, Cellomics) together with its platemap and,
optionally, the ground-truth masks.

>>> from hts.synth import synth_field
>>> f = synth_field(shape=(256, 256), seed=7, channels=("Hoechst", "Brightfield"))
>>> f.image.shape
(2, 256, 256)
"""

from hts.synth.field import SynthField, channel_kind, dose_effect, synth_field
from hts.synth.plate import FORMATS, SynthPlate, make_plate
from hts.synth.platemap import dose_of, dose_response_layout, write_platemap_csv

__all__ = [
    "FORMATS",
    "SynthField",
    "SynthPlate",
    "channel_kind",
    "dose_effect",
    "dose_of",
    "dose_response_layout",
    "make_plate",
    "synth_field",
    "write_platemap_csv",
]
