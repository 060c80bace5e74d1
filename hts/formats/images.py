"""Single image files (not plates): what training, ``hts train`` and ``hts evaluate`` read.

One reader for every kind hts accepts: TIFF (tifffile), ND2 (nd2), ``.npy`` and the
formats scikit-image reads (PNG, JPEG, BMP).

>>> import numpy as np, tempfile, tifffile, pathlib
>>> tmp = tempfile.TemporaryDirectory()
>>> path = pathlib.Path(tmp.name) / "a.tif"
>>> tifffile.imwrite(path, np.arange(12, dtype=np.uint16).reshape(3, 4))
>>> image = read_image(path)
>>> image.shape, image.dtype.name
((3, 4), 'uint16')
>>> tmp.cleanup()
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hts.errors import ImageFileError

__all__ = ["IMAGE_SUFFIXES", "read_image"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".nd2", ".npy", ".png", ".jpg", ".jpeg", ".bmp")


def read_image(path: str | Path, *, rgb: str = "gray") -> np.ndarray:
    """The array in an image file, as stored (no squeezing, no type change).

    ``rgb``: what to do with a colour image (last axis of 3 or 4 on a 3-D array whose
    first axis is longer than 4): ``"gray"`` averages the colour channels (float32),
    ``"keep"`` returns it as it is.

    Raises
    ------
    ImageFileError
        The file is missing, of an unknown kind, or unreadable (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ImageFileError(f"{path}: not an image file hts reads ({', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix == ".npy":
            img = np.load(path, allow_pickle=False)
        elif suffix == ".nd2":
            import nd2

            img = nd2.imread(str(path))
        elif suffix in (".tif", ".tiff"):
            import tifffile

            img = tifffile.imread(str(path))
        else:
            from skimage import io

            img = io.imread(str(path))
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise ImageFileError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
    img = np.asarray(img)
    if rgb == "gray" and img.ndim == 3 and img.shape[-1] in (3, 4) and img.shape[0] > 4:
        img = img[..., :3].astype(np.float32).mean(-1)
    return img
