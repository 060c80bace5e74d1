"""Segmentation networks in plain torch (no torchvision).

- :class:`UNet`: classic encoder/decoder with skip connections.
- :class:`FPFNet`: feature pyramid fusion for whole-cell segmentation (after
  Korfhage et al., "Detection and segmentation of morphologically complex
  eukaryotic cells in fluorescence microscopy images via feature pyramid
  fusion", PLoS Comput Biol 2020): a nucleus network's pyramid features are
  added into the cell network's pyramid, level by level.
- :class:`InferenceModel`: a network plus its output activations, the module
  that is exported to ONNX / TensorRT so engines contain the whole
  network-side post-processing.

All networks take ``(N, C, H, W)`` float32 and return raw logits
``(N, K, H, W)``; ``H`` and ``W`` must be multiples of ``model.multiple``
(``2 ** depth``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "FPFNet", "InferenceModel", "build_model", "count_parameters", "ARCHS", "ACTIVATIONS"]

NORMS = ("batch", "instance", "group", "none")
ACTIVATIONS = ("sigmoid", "relu", "softmax", "tanh", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r} (known: {', '.join(NORMS)})")


def _conv(c_in: int, c_out: int, norm: str) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), _norm(norm, c_out), nn.ReLU(inplace=True)]


class ConvBlock(nn.Sequential):
    """(conv3x3 - norm - ReLU) x 2."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch"):
        super().__init__(*_conv(c_in, c_out, norm), *_conv(c_out, c_out, norm))


def _widths(base: int, depth: int) -> list[int]:
    """Channels per level 0..depth: ``base * 2**i``, the bottleneck as wide as the level above it."""
    if base < 1 or depth < 1:
        raise ValueError(f"base and depth must be >= 1 (got base={base}, depth={depth})")
    return [base * 2 ** min(i, depth - 1) for i in range(depth + 1)]


class Encoder(nn.Module):
    """Conv blocks with 2x2 max-pooling between them; returns the features of every level (fine to coarse)."""

    def __init__(self, in_channels: int, widths: Sequence[int], norm: str):
        super().__init__()
        chans = [in_channels, *widths]
        self.blocks = nn.ModuleList(ConvBlock(chans[i], chans[i + 1], norm) for i in range(len(widths)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


def _up(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class UNet(nn.Module):
    """U-Net: encoder/decoder with skip connections, raw logits out.

    Parameters
    ----------
    in_channels, out_channels : int
        Input image channels and output logit channels.
    base : int
        Channels of the first level; level ``i`` has ``base * 2**i`` (the
        bottleneck is as wide as the deepest encoder level).
    depth : int
        Number of 2x down-samplings. ``H`` and ``W`` must be multiples of
        ``2**depth`` (:attr:`multiple`).
    norm : {"batch", "instance", "group", "none"}
        Normalization after each convolution.
    up : {"bilinear", "transpose"}
        Decoder up-sampling: bilinear interpolation or a 2x2 transposed convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        base: int = 16,
        depth: int = 4,
        norm: str = "batch",
        up: str = "bilinear",
    ):
        super().__init__()
        if up not in ("bilinear", "transpose"):
            raise ValueError(f"unknown up-sampling {up!r} (known: bilinear, transpose)")
        w = _widths(base, depth)
        self.in_channels, self.out_channels, self.depth, self.multiple = in_channels, out_channels, depth, 2**depth
        self.encoder = Encoder(in_channels, w, norm)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(w[i + 1], w[i + 1], 2, stride=2)
            if up == "transpose"
            else nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            for i in range(depth)
        )
        self.decoder = nn.ModuleList(ConvBlock(w[i + 1] + w[i], w[i], norm) for i in range(depth))
        self.head = nn.Conv2d(w[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        y = feats[-1]
        for i in reversed(range(self.depth)):
            y = self.decoder[i](torch.cat([feats[i], self.ups[i](y)], dim=1))
        return self.head(y)


class PyramidNet(nn.Module):
    """Encoder plus an FPN top-down decoder with a lateral output at every level.

    Level ``i`` of the pyramid is ``smooth_i(lateral_i(enc_i) + up(P_{i+1}))``
    (``pyramid`` channels at every level), plus ``inject[i]`` when given (the
    fusion point of :class:`FPFNet`). The head up-samples every level to full
    resolution, sums them and predicts ``out_channels`` logits.
    """

    def __init__(self, in_channels: int, out_channels: int, *, base: int, depth: int, pyramid: int, norm: str):
        super().__init__()
        w = _widths(base, depth)
        self.depth = depth
        self.encoder = Encoder(in_channels, w, norm)
        self.laterals = nn.ModuleList(nn.Conv2d(c, pyramid, 1) for c in w)
        self.smooth = nn.ModuleList(nn.Sequential(*_conv(pyramid, pyramid, norm)) for _ in w)
        self.head = nn.Sequential(*_conv(pyramid, pyramid, norm), nn.Conv2d(pyramid, out_channels, 1))

    def forward(
        self, x: torch.Tensor, inject: Sequence[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and the pyramid features, fine (level 0) to coarse (level ``depth``)."""
        enc = self.encoder(x)
        levels: list[torch.Tensor] = []
        for i in reversed(range(self.depth + 1)):
            t = self.laterals[i](enc[i])
            p = self.smooth[i](t if not levels else t + _up(levels[0]))
            levels.insert(0, p if inject is None else p + inject[i])
        fused = levels[0]
        for i in range(1, self.depth + 1):
            fused = fused + _up(levels[i], 2**i)
        return self.head(fused), levels


class FPFNet(nn.Module):
    """Feature pyramid fusion network for whole-cell segmentation.

    Input ``(N, 2, H, W)``: channel 0 = nucleus, channel 1 = cell. A nucleus
    :class:`PyramidNet` sees the nucleus channel; a cell :class:`PyramidNet` of
    the same structure sees ``[cell, nucleus]``. Each nucleus pyramid level is
    **added** to the corresponding cell pyramid level (so it also flows down
    the cell top-down path). Output: ``(N, nucleus_out + cell_out, H, W)``
    logits, nucleus channels first. ``H, W`` must be multiples of ``2**depth``.

    The nucleus branch is trained first; :meth:`freeze_nucleus` then freezes
    it (no gradients, normalization statistics fixed) for training the cell branch.

    Parameters
    ----------
    base, depth, norm
        As for :class:`UNet`.
    nucleus_out, cell_out : int
        Logit channels of the nucleus and the cell heads.
    pyramid : int, optional
        Channels of every pyramid level (default ``2 * base``).
    """

    in_channels = 2

    def __init__(
        self,
        *,
        base: int = 16,
        depth: int = 4,
        nucleus_out: int,
        cell_out: int,
        norm: str = "batch",
        pyramid: int | None = None,
    ):
        super().__init__()
        kw = dict(base=base, depth=depth, pyramid=pyramid or 2 * base, norm=norm)
        self.nucleus = PyramidNet(1, nucleus_out, **kw)
        self.cell = PyramidNet(2, cell_out, **kw)
        self.nucleus_out, self.cell_out = nucleus_out, cell_out
        self.out_channels, self.depth, self.multiple = nucleus_out + cell_out, depth, 2**depth
        self.nucleus_frozen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nuc, cell = x[:, 0:1], x[:, 1:2]
        nuc_logits, nuc_levels = self.nucleus(nuc)
        cell_logits, _ = self.cell(torch.cat([cell, nuc], dim=1), inject=nuc_levels)
        return torch.cat([nuc_logits, cell_logits], dim=1)

    def freeze_nucleus(self) -> FPFNet:
        """Stop training the nucleus branch: ``requires_grad=False``, kept in eval mode."""
        for p in self.nucleus.parameters():
            p.requires_grad_(False)
        self.nucleus_frozen = True
        self.nucleus.eval()
        return self

    def train(self, mode: bool = True) -> FPFNet:
        super().train(mode)
        if self.nucleus_frozen:
            self.nucleus.eval()
        return self


ARCHS = {"unet": UNet, "fpf": FPFNet}


def build_model(arch: str, config: dict) -> nn.Module:
    """A freshly initialised network: ``arch`` in :data:`ARCHS`, ``config`` its keyword arguments.

    Raises
    ------
    ValueError
        Unknown ``arch`` or bad ``config`` (the message says which).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(ARCHS)})")
    try:
        return ARCHS[arch](**config)
    except TypeError as e:
        raise ValueError(f"bad arch_config for {arch!r}: {e}") from None


class InferenceModel(nn.Module):
    """A network plus its per-head output activations.

    Parameters
    ----------
    net : nn.Module
        Returns logits ``(N, K, H, W)``.
    heads : list of dict
        ``{"name": str, "channels": int, "activation": str}`` in channel order;
        the channels must add up to ``K``. Activations: ``sigmoid``, ``relu``,
        ``softmax`` (over the head's channels), ``tanh``, ``none``.
    """

    def __init__(self, net: nn.Module, heads: Sequence[dict]):
        super().__init__()
        self.net = net
        self.heads = [dict(h) for h in heads]
        for h in self.heads:
            if h.get("activation", "none") not in ACTIVATIONS:
                raise ValueError(
                    f"head {h.get('name')!r}: unknown activation {h['activation']!r} (known: {', '.join(ACTIVATIONS)})"
                )
            if not isinstance(h.get("channels"), int) or h["channels"] < 1:
                raise ValueError(f"head {h.get('name')!r}: 'channels' must be a positive integer")
        total = sum(h["channels"] for h in self.heads)
        out = getattr(net, "out_channels", total)
        if total != out:
            raise ValueError(f"heads have {total} channels in all but the network outputs {out}")
        self.out_channels = total
        self.in_channels = getattr(net, "in_channels", None)
        self.multiple = getattr(net, "multiple", 1)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Apply each head's activation to its channel slice."""
        parts, c = [], 0
        for h in self.heads:
            y = logits[:, c : c + h["channels"]]
            c += h["channels"]
            act = h.get("activation", "none")
            if act == "sigmoid":
                y = torch.sigmoid(y)
            elif act == "relu":
                y = torch.relu(y)
            elif act == "softmax":
                y = torch.softmax(y, dim=1)
            elif act == "tanh":
                y = torch.tanh(y)
            parts.append(y)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.net(x))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
