"""Synthetic plates for tests, demos and benchmarks.

:func:`synth_field` renders one realistic field of view with ground-truth
labels; :func:`make_plate` writes a whole plate in one of the supported
acquisition formats together with its platemap.
"""

from hts.synth.field import SynthField, channel_kind, dose_effect, synth_field

__all__ = ["SynthField", "channel_kind", "dose_effect", "synth_field"]
