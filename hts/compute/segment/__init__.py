"""Segmentation: engines (:mod:`hts.compute.segment.engines`), tiling, post-processing,
networks and inference backends, pixel-size estimation and sanity checks.
"""
