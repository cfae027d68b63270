import os

import keras
import numpy as np
import pytest

from conftest import blob_images, conv_layers, run_script, tiny_model
from diffusion_keras.models.saving import load_model
from diffusion_keras.utils.precision import PRECISIONS, auto_precision, resolve_precision


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_trains_and_round_trips(precision, tmp_path):
    model = tiny_model(precision=precision)
    history = model.fit(blob_images(16), batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["n_loss"][0])
    if precision == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    compute = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
    convs = conv_layers(model.network)
    assert convs[1].compute_dtype == compute[precision]
    # The output conv stays float32, so the loss and the sampler are float32.
    assert convs[-1].compute_dtype == "float32"
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = load_model(path)
    assert loaded.precision == precision
    np.testing.assert_array_equal(loaded.generate(2, 3, seed=0), model.generate(2, 3, seed=0))
    loaded.fit(blob_images(8), batch_size=8, epochs=1, verbose=0)


@pytest.mark.slow
def test_a_model_samples_in_another_precision(tmp_path):
    model = tiny_model(precision="mixed_bfloat16")
    model.fit(blob_images(16), batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    as_float32 = load_model(path, precision="float32")
    assert as_float32.precision == "float32"
    assert as_float32.network.layers[3].compute_dtype == "float32"
    for a, b in zip(as_float32.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    difference = np.abs(as_float32.generate(4, 5, seed=1) - model.generate(4, 5, seed=1))
    assert difference.mean() < 0.02


def test_auto_precision_follows_the_rule(monkeypatch):
    import keras

    import diffusion_keras.utils.precision as precision

    # GPUs, on any backend: by the oldest GPU's compute capability.
    for capabilities, expected in [([(8, 6)], "mixed_bfloat16"), ([(9, 0), (7, 5)],
                                   "mixed_float16"), ([(6, 1)], "float32")]:  # fmt: skip
        monkeypatch.setattr(precision, "_gpu_capabilities", lambda c=capabilities: c)
        assert auto_precision() == expected
    monkeypatch.setattr(precision, "_gpu_capabilities", lambda: [])
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(precision, "cpu_bfloat16_speedup", lambda: 1.8)
    if keras.backend.backend() != "tensorflow":
        # JAX's and PyTorch's CPU bfloat16 trained slower than float32.
        assert auto_precision() == "float32"
        return
    assert auto_precision() == "mixed_bfloat16"
    # Native bfloat16 that runs slower than float32 (an Intel Xeon seen here: 0.5x).
    monkeypatch.setattr(precision, "cpu_bfloat16_speedup", lambda: 0.5)
    assert auto_precision() == "float32"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(precision, "cpu_bfloat16_speedup", lambda: 1 / 0)  # never asked
    assert auto_precision() == "float32"
    assert resolve_precision("float32") == "float32"
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("half")


def test_a_model_built_with_auto_precision_takes_what_auto_picks():
    model = tiny_model(precision="auto")
    assert model.precision == auto_precision()
    assert model.with_precision("auto") is model
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        tiny_model(precision="half")


@pytest.mark.slow
def test_generate_cli_takes_a_precision(tmp_path):
    model = tiny_model()
    model.fit(blob_images(8), batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    out = tmp_path / "bf16.png"
    result = run_script(
        "generate.py", path, "--precision", "mixed_bfloat16", "--num-images", 2, "--steps", 2,
        "--output", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.exists()


@pytest.mark.parametrize("setting, expected", [("auto", False), ("off", False), ("on", True)])
def test_jit_compile_setting(setting, expected):
    from diffusion_keras.training.run import TrainConfig, build_model

    config = TrainConfig(image_size=16, widths=(8, 16), block_depth=1, jit_compile=setting)
    assert build_model(config).jit_compile is expected


def test_unknown_jit_compile_setting_is_refused():
    from diffusion_keras.training.run import resolve_jit_compile

    with pytest.raises(ValueError, match="jit_compile must be auto, on or off"):
        resolve_jit_compile("maybe")


def test_the_bfloat16_speedup_is_measured_once_per_machine(monkeypatch, tmp_path):
    import diffusion_keras.utils.precision as precision

    calls = []
    monkeypatch.setenv("DIFFUSION_KERAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "measure_bfloat16_speedup", lambda: calls.append(1) or 0.7)
    assert precision.cpu_bfloat16_speedup() == 0.7
    assert precision.cpu_bfloat16_speedup() == 0.7
    assert len(calls) == 1 and (tmp_path / "cache" / "bfloat16_speedup.json").exists()
    # Another oneDNN setting is another measurement.
    other = "1" if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0" else "0"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", other)
    assert precision.cpu_bfloat16_speedup() == 0.7 and len(calls) == 2
    # A damaged or unwritable cache only costs a measurement.
    (tmp_path / "cache" / "bfloat16_speedup.json").write_text("{not json")
    assert precision.cpu_bfloat16_speedup() == 0.7 and len(calls) == 3
    monkeypatch.setenv("DIFFUSION_KERAS_CACHE", "/proc/no_such_place")
    assert precision.cpu_bfloat16_speedup() == 0.7 and len(calls) == 4


def test_the_bfloat16_probe_times_real_convolutions():
    from diffusion_keras.utils.precision import measure_bfloat16_speedup

    speedup = measure_bfloat16_speedup(repeats=2)
    # With oneDNN off, TensorFlow emulates bfloat16 convolutions: 0.043x measured here.
    assert np.isfinite(speedup) and 0.001 < speedup < 20.0
