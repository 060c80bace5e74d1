"""cellpose: a Cellpose model (optional dependency, local weights only) as an hts engine.

Registered like every engine (entry point ``cellpose`` of ``hts.engines``) and
listed even when the ``cellpose`` package is missing, marked unavailable, so
``hts engines`` says what to install instead of hiding the engine. Nothing is
downloaded at run time: ``-p model=PATH`` names a local weights file (a
Cellpose hub model cached by ``cellpose`` itself, or one trained with it), and
its SHA-256 is the run's model checksum, like the shipped engines' weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from skimage import filters, segmentation

from hts.compute.segment import postprocess as pp
from hts.compute.segment.engines.base import CYTOPLASM_NAMES, NUCLEUS_NAMES, Engine, EngineParams, Role
from hts.errors import EngineError

__all__ = ["CellposeEngine", "CellposeParams", "INSTALL_HINT"]

INSTALL_HINT = "cellpose is not installed: pip install 'hts[cellpose]'"


class CellposeParams(EngineParams):
    model: str | None = Field(
        None, description="Path of a local Cellpose weights file (required; nothing is downloaded)."
    )
    diameter_um: float = Field(
        10.0,
        gt=0,
        description="Typical diameter of the objects the model segments (nuclei; cells with a cytoplasm channel), converted to pixels with the plate's pixel size.",
    )
    flow_threshold: float = Field(
        0.4, ge=0, description="Cellpose flow error threshold (higher: more, less regular masks)."
    )
    cellprob_threshold: float = Field(
        0.0, ge=-6, le=6, description="Cellpose cell-probability threshold (lower: larger and more masks)."
    )
    cell_expansion_um: float = Field(
        0.0, ge=0, description="Without a cytoplasm channel, cells are the nuclei expanded by this distance."
    )


class CellposeEngine(Engine):
    """Cellpose (Stringer et al., Nat Methods 18:100, 2021; Pachitariu & Stringer, Nat Methods 19:1634, 2022).

    A Cellpose network predicts flows toward object centres and a cell
    probability; pixels that flow to the same sink form one object. The model is
    run on each tile of the field with the object diameter converted from µm to
    the plate's pixels, so one weights file serves every magnification.

    Nucleus channel only: the model's objects are the nuclei (a nucleus model
    such as ``nuclei``); cells are the nuclei expanded by ``cell_expansion_um``.
    With a cytoplasm channel the model sees (cytoplasm, nucleus) (a cytoplasm
    model such as ``cyto3``): its objects are the cells, and each cell's nucleus
    is its part above the nucleus channel's Otsu threshold (so a cell and its
    nucleus share an id).
    """

    name = "cellpose"
    summary = "Cellpose flows on nucleus (or cytoplasm + nucleus); local weights, optional package"
    roles = {
        "nucleus": Role("nuclear stain (DAPI / Hoechst)", guess=NUCLEUS_NAMES),
        "cytoplasm": Role(
            "cytoplasm / cell-body channel: the model's objects are cells", required=False, guess=CYTOPLASM_NAMES
        ),
    }
    outputs = ("nuclei", "cells")
    backends = ("torch",)
    Params = CellposeParams

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this engine cannot run here (``cellpose`` not importable), or None; checked without importing it."""
        if sys.modules.get("cellpose") is not None:
            return None
        try:
            found = importlib.util.find_spec("cellpose") is not None
        except (ImportError, ValueError):
            found = False
        return None if found else INSTALL_HINT

    def __init__(
        self, params: EngineParams | dict[str, Any] | None = None, *, backend: str = "auto", device: str = "auto"
    ):
        super().__init__(params, backend=backend, device=device)
        if backend not in ("auto", "torch"):
            raise EngineError(
                f"engine cellpose runs Cellpose's own torch model; --backend {backend} is for the shipped deep engines"
            )
        try:
            from cellpose import models
        except ImportError:
            raise EngineError(INSTALL_HINT) from None
        if not self.params.model:
            raise EngineError(
                "engine cellpose: -p model=PATH is required (a local Cellpose weights file; nothing is downloaded)"
            )
        self.weights = Path(self.params.model).expanduser().resolve()
        if not self.weights.is_file():
            raise EngineError(f"engine cellpose: no Cellpose weights file at {self.weights}")
        self.backend, self.device = "torch", _device(device)
        self.model = models.CellposeModel(pretrained_model=str(self.weights), gpu=self.device.startswith("cuda"))
        h = hashlib.sha256()
        with open(self.weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self._sha256 = h.hexdigest()

    @property
    def model_sha256(self) -> str:
        return self._sha256

    def max_object_um(self) -> float:
        return self.params.diameter_um * 1.5 + 2 * self.params.cell_expansion_um

    def diameter_px(self, pixel_size_um: float) -> float:
        """Cellpose's ``diameter`` (pixels of the image it is given) for objects of ``diameter_um`` at this pixel size."""
        return pp.um_to_px(self.params.diameter_um, pixel_size_um)

    def prepare(self, images: dict[str, np.ndarray], pixel_size_um: float) -> dict[str, Any]:
        ctx: dict[str, Any] = {"pixel_size_um": pixel_size_um, "diameter_px": self.diameter_px(pixel_size_um)}
        if "cytoplasm" in images:  # the nucleus threshold, once per field (every tile splits cells the same way)
            nuc = images["nucleus"][::2, ::2].astype(np.float32)
            ctx["nuc_threshold"] = float(filters.threshold_otsu(nuc)) if nuc.min() < nuc.max() else float(nuc.max())
        return ctx

    def segment_tile(self, images, maps, ctx) -> dict[str, np.ndarray]:
        p, px = self.params, ctx["pixel_size_um"]
        nuc = images["nucleus"].astype(np.float32)
        cyt = images.get("cytoplasm")
        if cyt is None:
            img, channels, extra = nuc, [0, 0], {}
        else:
            img, channels, extra = np.stack([cyt.astype(np.float32), nuc], axis=-1), [1, 2], {"channel_axis": -1}
        out = self.model.eval(
            img,
            diameter=ctx["diameter_px"],
            channels=channels,
            flow_threshold=p.flow_threshold,
            cellprob_threshold=p.cellprob_threshold,
            **extra,
        )
        masks = np.asarray(out[0]).astype(np.int32)
        if masks.shape != nuc.shape:
            raise EngineError(
                f"engine cellpose: the model returned masks of shape {masks.shape} for a tile of {nuc.shape}"
            )
        if cyt is None:
            cells = (
                segmentation.expand_labels(masks, distance=pp.um_to_px(p.cell_expansion_um, px))
                if p.cell_expansion_um
                else masks
            )
            return {"nuclei": masks, "cells": cells.astype(np.int32)}
        return {"nuclei": np.where(nuc > ctx["nuc_threshold"], masks, 0).astype(np.int32), "cells": masks}


def _device(device: str) -> str:
    """The device Cellpose runs on (it takes only gpu=True/False): ``auto`` is the GPU when torch sees one."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("cpu", "cuda"):
        return device
    raise EngineError(f"engine cellpose: --device {device}: choose auto, cpu or cuda (Cellpose picks the GPU itself)")
