"""hts's h-maxima (one radix sort) against scikit-image's, array for array."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DATA
from scipy import ndimage as ndi
from skimage import filters, morphology

from hts.compute.segment.reconstruct import _stable_order, h_maxima


def test_radix_order_is_numpys_stable_order():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 100, 5000), [0.0, -0.0, 1e-30, -1e-30, 3.5, 3.5, -7.25, -7.25]]).astype(
        np.float32
    )
    from hts.compute.segment.reconstruct import _sortable

    order = _stable_order(_sortable(values))
    assert np.array_equal(values[order], np.sort(values, kind="stable"))
    # among equal values the first comes first, as a stable sort keeps them
    same = np.flatnonzero(values == np.float32(3.5))
    assert list(np.flatnonzero(np.isin(order, same))) == sorted(np.flatnonzero(np.isin(order, same)))


@pytest.mark.parametrize("seed", range(40))
def test_equal_to_scikit_image_on_random_images_with_ties(seed: int):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(2, 48, 2))
    image = (rng.integers(0, 7, shape) * rng.choice([1.0, 0.5, 0.37])).astype(np.float32)
    if seed % 3 == 0:
        image -= 2.5  # negative values
    if seed % 5 == 0:
        image = ndi.gaussian_filter(image, 1.5)  # smooth, no ties
    h = float(rng.choice([0.37, 0.5, 1.0, 2.0]))
    assert np.array_equal(h_maxima(image, h), morphology.h_maxima(image, h).astype(bool))


def test_equal_to_scikit_image_on_a_real_distance_map():
    img = tifffile.imread(DATA / "nuclei_gt" / "dsb2018_img2d.tif").astype(np.float32)
    smooth = filters.gaussian(img, 2, preserve_range=True)
    mask = smooth > filters.threshold_otsu(smooth)
    dist = filters.gaussian(ndi.distance_transform_edt(mask).astype(np.float32), 1, preserve_range=True).astype(
        np.float32
    )
    for h in (1.0, 2.0, 4.0):
        ours, theirs = h_maxima(dist, h), morphology.h_maxima(dist, h).astype(bool)
        assert ours.sum() > 50 and np.array_equal(ours, theirs)


def test_flat_and_tiny_images():
    assert not h_maxima(np.zeros((5, 5), np.float32), 1.0).any()  # h above the range: no maxima
    assert np.array_equal(
        h_maxima(np.array([[0, 3]], np.float32), 1.0),
        morphology.h_maxima(np.array([[0, 3]], np.float32), 1.0).astype(bool),
    )
    ints = np.array([[0, 5, 0], [0, 1, 0]], np.uint8)  # not float32: scikit-image's own function
    assert np.array_equal(h_maxima(ints, 2), morphology.h_maxima(ints, 2).astype(bool))
