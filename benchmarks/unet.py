"""Deep-engine network throughput: fields/s of the network alone and the fraction of peak FLOP/s it reaches.

FLOPs of one forward pass are counted with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matmuls; 2 FLOPs per multiply-add) on the engine's network at the
field size. The peak is *measured* on the same device: the best FP32 (and, on CUDA,
FP16) dense matmul throughput, ``torch.mm`` on 4096² (CUDA) or 2048² (CPU) matrices,
i.e. an achievable peak rather than a datasheet one. With ``--device cuda`` and no GPU
nothing is measured (the caller reports that).
"""

from __future__ import annotations

import time

import numpy as np


def matmul_peak_flops(device: str, dtype: str = "float32", n: int | None = None, seconds: float = 1.0) -> float:
    import torch

    n = n or (4096 if device.startswith("cuda") else 2048)
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device, dtype=dt)
    b = torch.randn(n, n, device=device, dtype=dt)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    torch.mm(a, b)
    sync()
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def forward_flops(model, shape: tuple[int, ...]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(shape)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


PRECISIONS = {"auto": None, "fp32": False, "fp16": True}


def unet_benchmark(
    engine: str,
    *,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "auto",
    size: int = 512,
    batch: int = 1,
    repeat: int = 5,
) -> dict:
    """Time the engine's runner (its backend, device and precision) on ``batch`` random ``size``² inputs;
    FLOPs and fraction of peak. ``precision``: ``auto`` (the backend's default: fp16 on CUDA for torch
    and TensorRT), ``fp32`` or ``fp16``."""
    import torch

    from hts.compute.segment.backends import load_runner
    from hts.compute.segment.engines import engine_class
    from hts.compute.segment.nets import build_model

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    cls = engine_class(engine)
    eng = cls(backend=backend, device=device)
    spec = eng.spec
    model = build_model(spec.arch, spec.arch_config).eval()
    shape = (batch, spec.in_channels, size, size)
    flops = forward_flops(model, shape) if model is not None else None
    runner = load_runner(spec, eng.backend, eng.device, max_batch=batch, fp16=PRECISIONS[precision])
    x = np.random.default_rng(0).random(shape, np.float32)
    runner(x)  # warm-up (ONNX export / TensorRT build are cached)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        runner(x)
        best = min(best, time.perf_counter() - t0)
    dev = eng.device
    peak32 = matmul_peak_flops(dev.split(":")[0] if dev == "cpu" else dev)
    out = {
        "engine": engine, "backend": eng.backend, "device": dev, "precision": getattr(runner, "precision", None),
        "input": list(shape), "threads": torch.get_num_threads(),
        "forward_GFLOP": round(flops / 1e9, 2) if flops else None,
        "forward_s": round(best, 4), "fields_per_s": round(batch / best, 2),
        "achieved_GFLOP_per_s": round(flops / best / 1e9, 1) if flops else None,
        "matmul_peak_fp32_GFLOP_per_s": round(peak32 / 1e9, 1),
        "fraction_of_fp32_peak": round(flops / best / peak32, 3) if flops else None,
    }  # fmt: skip
    if dev.startswith("cuda"):
        peak16 = matmul_peak_flops(dev, "float16")
        out["matmul_peak_fp16_GFLOP_per_s"] = round(peak16 / 1e9, 1)
        out["fraction_of_fp16_peak"] = round(flops / best / peak16, 3) if flops else None
        out["gpu"] = torch.cuda.get_device_name(dev)
    return out


def network_matrix(
    engine: str,
    *,
    backends: list[str],
    precisions: list[str],
    device: str,
    size: int = 512,
    batch: int = 1,
    repeat: int = 5,
    on_row=None,
) -> list[dict]:
    """:func:`unet_benchmark` of every backend × precision, each row also handed to ``on_row`` as it
    finishes. A combination that cannot run here (TensorRT not installed, fp16 on ONNX Runtime or on
    a CPU) is a row saying why (``skipped``), one that fails while running (a TensorRT build, GPU
    memory) a row with the error (``failed``); neither stops the others."""
    from hts.compute.segment.backends import BACKENDS
    from hts.errors import EngineError

    unknown = [b for b in backends if b not in BACKENDS] + [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(
            f"unknown backend or precision {', '.join(map(repr, unknown))} "
            f"(backends: {', '.join(BACKENDS)}; precisions: {', '.join(PRECISIONS)})"
        )
    rows = []
    for backend in backends:
        for precision in precisions:
            key = {"engine": engine, "backend": backend, "device": device, "precision": precision}
            try:
                row = unet_benchmark(
                    engine, backend=backend, device=device, precision=precision, size=size, batch=batch, repeat=repeat
                )
            except EngineError as e:  # BackendUnavailable is an EngineError
                row = {**key, "skipped": str(e)}
            except Exception as e:  # noqa: BLE001 - recorded, and the other combinations still run
                row = {**key, "failed": f"{type(e).__name__}: {e}"}
            rows.append(row)
            if on_row:
                on_row(row)
    return rows
