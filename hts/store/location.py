"""Plate store locations: local paths or fsspec URLs (``s3://bucket/plates/X.zarr``, ``gs://``, ``file://``).

A location is either a local :class:`~pathlib.Path` (``file://`` URLs and plain
paths become absolute paths, so local stores keep zarr's ``LocalStore`` and plain
file operations) or a URL string without a trailing slash, opened through fsspec.

Credentials come from the filesystem's own configuration: for S3 (s3fs/botocore)
the ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
``AWS_PROFILE`` / ``AWS_DEFAULT_REGION`` environment variables, ``~/.aws/credentials``
and ``~/.aws/config``, or an instance role. An S3-compatible server (MinIO, Ceph,
moto) is named by ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; hts passes it
explicitly as ``client_kwargs={"endpoint_url": ...}`` so it works whatever the
botocore version. ``HTS_STORAGE_OPTIONS`` (a JSON object) adds any other fsspec
storage options (e.g. ``{"anon": true}`` or ``{"token": "..."}`` for ``gs://``).
Workers read the same variables, so set them on every machine.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["Location", "is_url", "location", "join", "storage_options", "filesystem"]

Location = Path | str
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(loc: str | Path | None) -> bool:
    """A remote (non-``file://``) URL."""
    return isinstance(loc, str) and bool(_SCHEME.match(loc)) and not loc.startswith("file://")


def location(loc: str | Path) -> Location:
    """Normalize: a remote URL without trailing ``/``, else an absolute local Path.

    URLs must arrive as strings (``Path("s3://b/x")`` is already ``s3:/b/x``), so
    options that take a store location are typed ``str``.
    """
    if isinstance(loc, Path):
        return loc.expanduser().resolve()
    if loc.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(loc).path)).resolve()
    if is_url(loc):
        return loc.rstrip("/")
    return Path(loc).expanduser().resolve()


def join(base: Location, *parts: str) -> Location:
    if isinstance(base, Path):
        return base.joinpath(*parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def storage_options(url: str) -> dict[str, Any]:
    """fsspec storage options for ``url`` from the environment (endpoint, ``HTS_STORAGE_OPTIONS``)."""
    opts: dict[str, Any] = {}
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
    extra = os.environ.get("HTS_STORAGE_OPTIONS")
    if extra:
        try:
            opts.update(json.loads(extra))
        except json.JSONDecodeError as e:
            from hts.errors import ConfigError

            raise ConfigError(f"HTS_STORAGE_OPTIONS is not a JSON object ({e})") from None
    return opts


def filesystem(url: str):
    """``(fs, path)``: the fsspec filesystem of ``url`` and the path inside it."""
    import fsspec

    return fsspec.core.url_to_fs(url, **storage_options(url))
