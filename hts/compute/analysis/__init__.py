"""Analysis of measured numbers: plate QC statistics (:mod:`.qc`), 4PL dose-response
fits (:mod:`.doseresponse`) and instance-segmentation accuracy (:mod:`.metrics`).
"""
