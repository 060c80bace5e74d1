"""Computation on pixels and tables, one subpackage per domain (no I/O of plates, no catalog):

- :mod:`hts.compute.segment`: segmentation engines (a registry with plug-ins), tiling
  and stitching, post-processing, networks and inference backends, pixel-size
  estimation, sanity checks of segmentations;
- :mod:`hts.compute.measure`: per-cell features (shape, intensity, texture, rod) and
  per-image statistics;
- :mod:`hts.compute.train`: training recipes, targets and the training loop behind ``hts train``;
- :mod:`hts.compute.analysis`: screening statistics (Z', SSMD, robust z), 4PL
  dose-response fits, instance-segmentation accuracy metrics.
"""
