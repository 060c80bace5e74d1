"""hts: a high-throughput-screening plate analyzer.

Ingest ND2 files and TIFF-folder plates into OME-Zarr HCS stores with a DuckDB
catalog; segment and measure cells on Dask; query per-well statistics with SQL.
"""

__version__ = "0.1.0"
