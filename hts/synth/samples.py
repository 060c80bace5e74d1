"""Synthetic training samples: :func:`hts.synth.synth_field` fields as
:class:`hts.compute.train.training.Sample` items (the training library itself never
imports the generators; whoever trains on synthetic data asks for them here).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hts.compute.train.training import Recipe, Sample

__all__ = ["synthetic_samples"]


def synthetic_samples(
    seeds: Iterable[int],
    *,
    recipe: Recipe | str,
    channels: Sequence[str],
    train_pixel_um: float = 0.65,
    normalization: Sequence[float] = (1.0, 99.8),
    shape: tuple[int, int] = (320, 320),
    weight: float = 1.0,
    vary: bool = True,
    **synth_kwargs: Any,
) -> list[Sample]:
    """Synthetic fields from :func:`hts.synth.synth_field`, one per seed (deterministic).

    ``channels`` are synth channel names, one per recipe input in order (e.g.
    ``("DAPI",)`` for nuclei, ``("Brightfield",)``, ``("DAPI", "GFP")`` for fpf).
    With ``vary`` each seed also draws (from its own generator) the density,
    nucleus size, dose, illumination, noise and defocus, so the set spans
    sparse to crowded fields; ``synth_kwargs`` override those draws. Synthetic
    fields are rendered at 0.65 µm/px.
    """
    from hts.compute.train.training import EngineError, get_recipe, make_sample
    from hts.synth.field import synth_field

    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if len(channels) != len(recipe.inputs):
        raise EngineError(f"synthetic_samples: {len(channels)} channels for inputs {recipe.inputs}")
    out = []
    for seed in seeds:
        kw: dict[str, Any] = {}
        if vary:
            r = np.random.default_rng([int(seed), 7919])
            kw = dict(
                density=float(r.uniform(0.25, 0.95)),
                nucleus_radius_px=float(r.uniform(7.5, 10.5)),
                cell_radius_px=float(r.uniform(18, 26)),
                dose=float(r.choice([0.0, 0.0, r.uniform(0, 1)])),
                illumination=float(r.uniform(0.0, 0.4)),
                noise=float(r.uniform(0.5, 2.5)),
                defocus=float(r.choice([0.0, r.uniform(-1.0, 1.0)])),
            )
        kw.update(synth_kwargs)
        f = synth_field(shape=shape, seed=int(seed), channels=tuple(channels), **kw)
        labels = {"nuclei": f.nuclei}
        if "cells" in recipe.labels:
            labels["cells"] = f.cells
        src = (
            f"hts.synth.synth_field(shape={tuple(shape)}, seed={int(seed)}, channels={tuple(channels)}, "
            + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in kw.items())
            + ")"
        )
        out.append(
            make_sample(
                f"synth-{'+'.join(channels)}-{seed}",
                f.image,
                labels,
                pixel_size_um=0.65,
                train_pixel_um=train_pixel_um,
                normalization=normalization,
                source=src,
                weight=weight,
                meta={"seed": int(seed), **kw},
            )
        )
    return out
