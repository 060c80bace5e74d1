"""Networks (UNet, FPFNet), model folders and the torch / ONNX Runtime / TensorRT runners."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hts.compute.segment.backends import (
    AUTO_ORDER,
    BackendUnavailable,
    EngineError,
    ModelSpec,
    OnnxRuntimeRunner,
    TorchRunner,
    available_backends,
    export_onnx,
    load_runner,
    resolve_device,
    save_model_dir,
)
from hts.compute.segment.nets import FPFNet, InferenceModel, UNet, build_model, count_parameters

UNET_HEADS = [
    {"name": "foreground", "channels": 1, "activation": "sigmoid"},
    {"name": "distance", "channels": 1, "activation": "relu"},
    {"name": "classes", "channels": 3, "activation": "softmax"},
]
FPF_HEADS = [
    {"name": "nucleus", "channels": 1, "activation": "sigmoid"},
    {"name": "nucleus_distance", "channels": 1, "activation": "relu"},
    {"name": "cell_classes", "channels": 3, "activation": "softmax"},
]
HAVE_CUDA = torch.cuda.is_available()
TRT_SKIP = "tensorrt not installed (optional extra; needs an NVIDIA GPU)"


def _randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and non-trivial normalization statistics, so eval-mode outputs are informative."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def _save(path: Path, arch: str, config: dict, heads: list[dict], in_channels: int, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = _randomize(build_model(arch, config), seed)
    return save_model_dir(
        path,
        net,
        name=f"test-{arch}",
        arch=arch,
        arch_config=config,
        heads=heads,
        in_channels=in_channels,
        extra={"pixel_size_um": 0.65, "normalize": [1, 99.8]},
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "unet": _save(root / "unet", "unet", {"in_channels": 1, "out_channels": 5}, UNET_HEADS, 1),
        "fpf": _save(root / "fpf", "fpf", {"base": 8, "depth": 3, "nucleus_out": 2, "cell_out": 3}, FPF_HEADS, 2),
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX cache for the module, so each model is exported once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTS_CACHE_DIR", str(tmp_path / "default-cache"))  # never ~/.cache in tests


# ----------------------------------------------------------------------------- networks


def test_unet_shapes_and_size():
    net = UNet(1, 3).eval()
    assert net.multiple == 16 and count_parameters(net) < 2_000_000
    with torch.no_grad():
        assert net(torch.randn(2, 1, 64, 96)).shape == (2, 3, 64, 96)
        for kw in ({"up": "transpose"}, {"norm": "group"}, {"norm": "instance"}, {"norm": "none", "depth": 2}):
            m = UNet(2, 4, base=8, **kw).eval()
            assert m(torch.randn(1, 2, 32, 48)).shape == (1, 4, 32, 48)
    assert UNet(1, 1, depth=5).multiple == 32
    with pytest.raises(ValueError, match="unknown norm"):
        UNet(1, 1, norm="layer")


def test_fpf_shapes_and_size():
    net = FPFNet(nucleus_out=2, cell_out=3).eval()
    assert net.multiple == 16 and net.out_channels == 5
    assert count_parameters(net) < 2_000_000
    with torch.no_grad():
        assert net(torch.randn(2, 2, 64, 80)).shape == (2, 5, 64, 80)


def test_fpf_nucleus_features_reach_the_cell_output():
    torch.manual_seed(0)
    net = _randomize(FPFNet(base=8, depth=3, nucleus_out=1, cell_out=2))
    with torch.no_grad():
        # Cut the direct route (the nucleus channel as the cell branch's 2nd input): only the fusion is left.
        net.cell.encoder.blocks[0][0].weight[:, 1].zero_()
        x = torch.randn(1, 2, 32, 32)
        x_nuc = x.clone()
        x_nuc[:, 0] += torch.randn(1, 32, 32)
        x_cell = x.clone()
        x_cell[:, 1] += torch.randn(1, 32, 32)
        y, y_nuc, y_cell = net(x), net(x_nuc), net(x_cell)
    assert (y_nuc[:, 1:] - y[:, 1:]).abs().max() > 1e-3  # nucleus input moves the cell logits (via fusion)
    assert (y_nuc[:, :1] - y[:, :1]).abs().max() > 1e-3
    assert torch.equal(y_cell[:, :1], y[:, :1])  # the cell channel never reaches the nucleus logits
    # and the fusion is what carries it: without injected features the cell logits ignore the nucleus input
    with torch.no_grad():
        a, _ = net.cell(torch.cat([x[:, 1:], x[:, :1]], 1))
        b, _ = net.cell(torch.cat([x_nuc[:, 1:], x_nuc[:, :1]], 1))
    assert torch.equal(a, b)


def test_fpf_freeze_nucleus():
    torch.manual_seed(0)
    net = FPFNet(base=8, depth=2, nucleus_out=1, cell_out=1)
    n_cell = count_parameters(net.cell)
    stats = {k: v.clone() for k, v in net.nucleus.state_dict().items() if "running" in k}
    net.freeze_nucleus().train()
    assert not net.nucleus.training and net.cell.training
    assert count_parameters(net, trainable_only=True) == n_cell
    net(torch.randn(2, 2, 32, 32)).square().mean().backward()
    assert all(p.grad is None for p in net.nucleus.parameters())
    assert all(p.grad is not None for p in net.cell.parameters())
    assert all(torch.equal(v, net.nucleus.state_dict()[k]) for k, v in stats.items())  # BN statistics frozen too


def test_inference_model_heads():
    torch.manual_seed(0)
    model = InferenceModel(UNet(1, 5, base=4, depth=2), UNET_HEADS).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, 16, 16) * 10)
    assert y.shape == (2, 5, 16, 16)
    assert (y[:, 0] > 0).all() and (y[:, 0] < 1).all() and (y[:, 1] >= 0).all()
    torch.testing.assert_close(y[:, 2:].sum(1), torch.ones(2, 16, 16))
    with pytest.raises(ValueError, match="4 channels in all but the network outputs 5"):
        InferenceModel(UNet(1, 5), UNET_HEADS[1:])
    with pytest.raises(ValueError, match="unknown activation"):
        InferenceModel(UNet(1, 1), [{"name": "x", "channels": 1, "activation": "gelu"}])
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("resnet", {})
    with pytest.raises(ValueError, match="bad arch_config"):
        build_model("unet", {"in_channels": 1})


# ----------------------------------------------------------------------------- model folders


def test_model_dir_round_trip(models):
    spec = ModelSpec.from_dir(models["unet"])
    assert (spec.name, spec.arch, spec.in_channels, spec.out_channels, spec.multiple) == ("test-unet", "unet", 1, 5, 16)
    assert spec.extra == {"pixel_size_um": 0.65, "normalize": [1, 99.8]}
    assert spec.sha256 == json.loads((models["unet"] / "config.json").read_text())["weights_sha256"]
    torch.manual_seed(0)
    original = InferenceModel(_randomize(build_model("unet", spec.arch_config)), UNET_HEADS).eval()
    loaded = spec.load_torch()
    assert not loaded.training
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(original(x), loaded(x))


def test_corrupt_weights_are_named(models, tmp_path):
    folder = shutil.copytree(models["unet"], tmp_path / "m")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(b ^ 0xFF for b in data[len(data) // 2 : len(data) // 2 + 8])
    weights.write_bytes(bytes(data))
    spec = ModelSpec.from_dir(folder)
    with pytest.raises(EngineError, match=r"weights file .*model\.safetensors is corrupt \(sha256 mismatch"):
        spec.load_torch()
    with pytest.raises(EngineError, match="corrupt"):
        load_runner(folder, backend="onnxruntime", device="cpu", cache_dir=tmp_path / "c")
    # a config that vouches for a garbage file: still named, as not a safetensors file
    weights.write_bytes(b"\x00garbage" * 10)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match=r"weights file .*model\.safetensors is corrupt \(not a readable safetensors"):
        ModelSpec.from_dir(folder).load_torch()
    weights.unlink()
    with pytest.raises(EngineError, match=r"weights file .*model\.safetensors is unreadable"):
        ModelSpec.from_dir(folder).load_torch()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c.pop("heads"), "missing keys heads"),
        (lambda c: (c.pop("arch"), c.pop("weights_sha256")), "missing keys arch, weights_sha256"),
        (lambda c: c.update(arch="resnet"), "unknown arch 'resnet'"),
        (lambda c: c.update(in_channels=3), "in_channels is 3 but arch 'unet' takes 1"),
        (lambda c: c["heads"].pop(), "heads have 2 channels in all but the network outputs 5"),
        (lambda c: c.update(weights="../x.safetensors"), "'weights' must be a file name"),
        (lambda c: c["arch_config"].update(depht=3), "bad arch_config"),
    ],
)
def test_bad_config_is_named(models, tmp_path, change, message):
    folder = tmp_path / "m"
    folder.mkdir()
    cfg = json.loads((models["unet"] / "config.json").read_text())
    change(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EngineError, match=re.escape(f"{folder}/config.json: ") + ".*" + re.escape(message)):
        ModelSpec.from_dir(folder)


def test_missing_model_folder_and_bad_save(tmp_path):
    with pytest.raises(EngineError, match=r"config\.json: not found"):
        ModelSpec.from_dir(tmp_path / "nope")
    with pytest.raises(EngineError, match="do not match arch 'unet'"):
        save_model_dir(
            tmp_path / "m",
            UNet(1, 2),
            name="x",
            arch="unet",
            arch_config={"in_channels": 1, "out_channels": 2, "base": 8},
            heads=[{"name": "a", "channels": 2, "activation": "softmax"}],
            in_channels=1,
        )
    with pytest.raises(EngineError, match="shadow known config keys"):
        save_model_dir(
            tmp_path / "m",
            UNet(1, 2),
            name="x",
            arch="unet",
            arch_config={"in_channels": 1, "out_channels": 2},
            heads=[{"name": "a", "channels": 2, "activation": "softmax"}],
            in_channels=1,
            extra={"arch": "x"},
        )


# ----------------------------------------------------------------------------- runners


@pytest.mark.parametrize("arch", ["unet", "fpf"])
def test_onnxruntime_matches_torch(models, cache, arch):
    spec = ModelSpec.from_dir(models[arch])
    ort_runner = OnnxRuntimeRunner(spec, "cpu", cache, threads=2, max_batch=2)
    torch_runner = TorchRunner(spec, "cpu")
    assert (ort_runner.backend, ort_runner.device, ort_runner.precision, ort_runner.max_batch) == (
        "onnxruntime",
        "cpu",
        "fp32",
        2,
    )
    assert (torch_runner.backend, torch_runner.precision) == ("torch", "fp32")
    rng = np.random.default_rng(1)
    for n, h, w in [(1, 64, 96), (3, 128, 80)]:  # dynamic N, H, W; 3 images run as chunks of 2 + 1
        x = rng.normal(size=(n, spec.in_channels, h, w)).astype(np.float32)
        a, b = ort_runner(x), torch_runner(x)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (n, 5, h, w)
        assert np.abs(a - b).max() < 1e-4
        assert a[:, 0].std() > 1e-3  # not a degenerate, constant output
        np.testing.assert_allclose(a[:, 2:].sum(1), 1, atol=1e-5)


def test_onnx_cache_written_once_and_reused(models, cache, monkeypatch):
    spec = ModelSpec.from_dir(models["unet"])
    first = OnnxRuntimeRunner(spec, "cpu", cache, threads=1)
    path = first.onnx_path
    assert path == cache / "onnx" / f"{spec.weights_sha256}-{spec.arch_hash}.onnx" and path.is_file()
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: pytest.fail("exported again"))
    second = OnnxRuntimeRunner(ModelSpec.from_dir(models["unet"]), "cpu", cache, threads=1)
    assert second.onnx_path == path and path.stat().st_mtime_ns == mtime
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left behind


def test_fp16_onnx_for_tensorrt_is_close(tmp_path):
    """The mixed-precision graph TensorRT builds from (fp16 body, fp32 I/O) runs close to fp32 (here on ORT CPU)."""
    import onnx
    import onnxruntime as ort

    spec = ModelSpec.from_dir(
        _save(tmp_path / "m", "unet", {"in_channels": 1, "out_channels": 5, "base": 4, "depth": 2}, UNET_HEADS, 1)
    )
    path = export_onnx(spec, tmp_path / "c", fp16=True)
    assert path.name.endswith("-fp16.onnx")
    graph = onnx.load(str(path)).graph
    assert (
        graph.input[0].type.tensor_type.elem_type
        == graph.output[0].type.tensor_type.elem_type
        == onnx.TensorProto.FLOAT
    )
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    x = np.random.default_rng(0).normal(size=(2, 1, 32, 48)).astype(np.float32)
    y16 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    assert np.abs(y16 - TorchRunner(spec, "cpu")(x)).max() < 2e-2


def test_runner_rejects_bad_batches(models):
    runner = TorchRunner(ModelSpec.from_dir(models["unet"]), "cpu")
    with pytest.raises(EngineError, match=r"expected a \(N, 1, H, W\) batch"):
        runner(np.zeros((1, 2, 64, 64), np.float32))
    with pytest.raises(EngineError, match="multiples of 16, got 64x72"):
        runner(np.zeros((1, 1, 64, 72), np.float32))
    assert runner(np.zeros((0, 1, 32, 32), np.float32)).shape == (0, 5, 32, 32)
    with pytest.raises(EngineError, match="fp16 inference needs a CUDA device"):
        TorchRunner(runner.spec, "cpu", fp16=True)


def test_auto_backend_and_devices(models, cache):
    runner = load_runner(models["unet"], device="cpu", cache_dir=cache)
    assert runner.backend == AUTO_ORDER["cpu"][0] == "onnxruntime" and runner.device == "cpu"
    assert load_runner(models["unet"], backend="torch", device="cpu").backend == "torch"
    assert set(available_backends()) == {"tensorrt", "onnxruntime", "torch"}
    assert available_backends("cpu")["onnxruntime"] == "available"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(EngineError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(EngineError, match="unknown backend 'openvino'"):
        load_runner(models["unet"], backend="openvino")
    if not HAVE_CUDA:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(EngineError, match="no CUDA device"):
            load_runner(models["unet"], backend="auto", device="cuda", cache_dir=cache)


def _tensorrt_usable() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None and HAVE_CUDA


@pytest.mark.skipif(_tensorrt_usable(), reason="tensorrt and a GPU are present: the real backend is tested instead")
def test_tensorrt_unavailable_is_explained(models):
    with pytest.raises(BackendUnavailable) as err:
        load_runner(ModelSpec.from_dir(models["unet"]), backend="tensorrt")
    expected = "TensorRT backend needs the optional extra: pip install 'hts[tensorrt]' on a machine with an NVIDIA GPU"
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)
    assert available_backends()["tensorrt"] == str(err.value)


@pytest.mark.slow
def test_tensorrt_matches_torch(tmp_path):
    pytest.importorskip("tensorrt", reason=TRT_SKIP)
    if not HAVE_CUDA:
        pytest.skip(TRT_SKIP)
    from hts.compute.segment.backends import TensorRTRunner

    spec = ModelSpec.from_dir(
        _save(tmp_path / "m", "unet", {"in_channels": 1, "out_channels": 5, "base": 8, "depth": 3}, UNET_HEADS, 1)
    )
    runner = TensorRTRunner(spec, "cuda", tmp_path / "c", fp16=True, max_batch=4, opt_shape=(128, 128))
    assert (runner.backend, runner.precision, runner.engine_path.is_file()) == ("tensorrt", "fp16", True)
    x = np.random.default_rng(0).normal(size=(5, 1, 128, 96)).astype(np.float32)
    assert np.abs(runner(x) - TorchRunner(spec, "cuda", fp16=False)(x)).max() < 2e-2
    mtime = runner.engine_path.stat().st_mtime_ns
    again = TensorRTRunner(spec, "cuda", tmp_path / "c", fp16=True, max_batch=4, opt_shape=(128, 128))
    assert again.engine_path == runner.engine_path and again.engine_path.stat().st_mtime_ns == mtime
    assert available_backends("cuda")["tensorrt"] == "available"
