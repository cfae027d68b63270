"""Exporting: `generate.py MODEL --export DIR` writes a SavedModel that generates alone.

A process with TensorFlow and without this package (or Keras) loads it, and
its `generate(seed, num_images)` gives the very pixels that `generate.py
MODEL --seed S --num-images N --output-dir D` writes: the noise is the same
numbers (`sampling.noise`), and the loop is the same compiled function.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, in_process_error, one_line_error, run_script, tensorflow_only

pytestmark = tensorflow_only("a SavedModel is a TensorFlow graph")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

# Loads an export with TensorFlow alone: importing this package or Keras fails.
STANDALONE = """
import sys
sys.modules["diffusion_keras"] = None
sys.modules["keras"] = None
import numpy as np
import tensorflow as tf

folder, seed, count, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
signature = sys.argv[5] if len(sys.argv) > 5 else "generate"
inputs = dict(seed=tf.constant(seed, tf.int64), num_images=tf.constant(count, tf.int32))
if signature in ("image_to_image", "inpaint"):  # uint8 images (and masks) in .npy files
    inputs = dict(seed=inputs["seed"], init_image=tf.constant(np.load(sys.argv[6])),
                  strength=tf.constant(float(sys.argv[7])))
    if signature == "inpaint":
        inputs["mask"] = tf.constant(np.load(sys.argv[8]))
if signature == "generate_class":
    inputs.update(class_index=tf.constant(int(sys.argv[6])),
                  guidance_scale=tf.constant(float(sys.argv[7])))
if signature == "generate_prompt":
    inputs.update(prompt=tf.constant(sys.argv[6]), negative_prompt=tf.constant(sys.argv[7]),
                  guidance_scale=tf.constant(float(sys.argv[8])))
images = tf.saved_model.load(folder).signatures[signature](**inputs)["images"]
assert images.dtype == tf.uint8, images.dtype
assert not any(name.startswith(("diffusion_keras", "keras")) for name in sys.modules
               if sys.modules[name] is not None)
np.save(out, images.numpy())
"""


# Runs an export's LiteRT or ONNX file on the noise of a seed that the
# export's own `noise.py` draws, without this package or Keras.
PORTABLE = """
import sys
sys.modules["diffusion_keras"] = None
sys.modules["keras"] = None
import json
import numpy as np

folder, seed, count, out, kind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
sys.path.insert(0, folder)
from noise import initial_noise, step_noises

settings = json.load(open(folder + "/generation.json"))
shape = (settings["image_size"], settings["image_size"], settings["channels"])
steps = settings["diffusion_steps"] if settings["eta"] > 0 else 1
inputs = dict(initial_noise=initial_noise(shape, count, seed),
              step_noises=step_noises(shape, seed, range(count), steps))
if kind == "onnx":
    import onnxruntime
    images = onnxruntime.InferenceSession(folder + "/generate.onnx").run(None, inputs)[0]
else:
    import tensorflow as tf
    interpreter = tf.lite.Interpreter(model_path=folder + "/generate.tflite")
    images = interpreter.get_signature_runner("generate_from_noise")(**inputs)["images"]
assert images.dtype == np.uint8, images.dtype
np.save(out, images)
"""


def run_portable(tmp_path, folder, seed, count, kind):
    script = tmp_path / "portable.py"
    script.write_text(PORTABLE)
    out = tmp_path / f"{kind}.npy"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(seed), str(count), str(out), kind],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return np.load(out)


def standalone(tmp_path, folder, seed, count, *signature):
    script = tmp_path / "serve.py"
    script.write_text(STANDALONE)
    out = tmp_path / "images.npy"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(seed), str(count), str(out),
         *map(str, signature)],
        capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return np.load(out)


def written_pngs(folder):
    names = sorted(os.listdir(folder))
    return np.stack([np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names])


def export_and_generate(tmp_path, model, *flags):
    exported = tmp_path / "export"
    done = run_script("generate.py", model, "--export", exported, "--precision", "float32",
                      *flags)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "signatures generate" in done.stdout
    return exported


@pytest.mark.parametrize("name", ["pixel", pytest.param("latent", marks=pytest.mark.slow)])
def test_an_export_gives_generate_pys_pixels_in_a_process_without_the_package(tmp_path, name):
    model = os.path.join(FIXTURES, f"{name}.keras")
    exported = export_and_generate(tmp_path, model)
    written = tmp_path / "written"
    done = run_script("generate.py", model, "--seed", 12, "--num-images", 3, "--output-dir",
                      written, "--output", tmp_path / "grid.png",
                      "--precision", "float32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(standalone(tmp_path, exported, 12, 3), written_pngs(written))
    settings = json.loads((exported / "generation.json").read_text())
    assert settings["sampler"] == "dpmpp_2m" and settings["eta"] == 1.0


@pytest.mark.slow
def test_an_exports_edits_give_generate_pys_edits_in_a_process_without_the_package(tmp_path):
    """`image_to_image` is `--init-image --strength`, `inpaint` is `--mask`
    too: the same pixels, each sampled as generate.py samples that edit."""
    model = os.path.join(FIXTURES, "pixel.keras")
    exported = export_and_generate(tmp_path, model)
    rng = np.random.default_rng(0)
    images = (rng.uniform(size=(2, 16, 16, 3)) * 255).astype(np.uint8)
    masks = np.zeros((2, 16, 16, 1), np.uint8)
    masks[0, 4:12, 4:12], masks[1, :, 8:] = 255, 255
    for folder, arrays in (("images", images), ("masks", masks[..., 0])):
        (tmp_path / folder).mkdir()
        for i, array in enumerate(arrays):
            Image.fromarray(array).save(tmp_path / folder / f"{i}.png")
    np.save(tmp_path / "init.npy", images)
    np.save(tmp_path / "masks.npy", masks)
    for strength, mask in ((0.35, False), (1.0, False), (0.6, True), (1.0, True)):
        written = tmp_path / f"written{strength}{mask}"
        flags = ["--mask", tmp_path / "masks"] if mask else []
        done = run_script("generate.py", model, "--init-image", tmp_path / "images",
                          "--strength", strength, *flags, "--seed", 7, "--output-dir", written,
                          "--output", tmp_path / "grid.png", "--precision", "float32")  # fmt: skip
        assert done.returncode == 0, done.stderr
        signature = ["inpaint", strength, tmp_path / "masks.npy"] if mask else [
            "image_to_image", strength]
        served = standalone(tmp_path, exported, 7, 2, signature[0], tmp_path / "init.npy",
                            *signature[1:])  # fmt: skip
        np.testing.assert_array_equal(served, written_pngs(written))
        if mask:
            np.testing.assert_array_equal(served[masks[..., 0] == 0], images[masks[..., 0] == 0])
    settings = json.loads((exported / "generation.json").read_text())
    assert settings["image_to_image"]["eta"] == 0.0 and settings["inpaint"]["sampler"] == "ddim"


def test_an_edit_strength_must_be_a_whole_number_of_hundredths(tmp_path):
    import tensorflow as tf

    import diffusion_keras as dk
    from diffusion_keras.export import export_saved_model

    model = dk.load_model(os.path.join(FIXTURES, "pixel.keras"))
    export_saved_model(model, str(tmp_path / "e"), diffusion_steps=2)
    edit = tf.saved_model.load(str(tmp_path / "e")).signatures["image_to_image"]
    images = tf.zeros((1, 16, 16, 3), tf.uint8)
    for strength in (0.555, 0.0, 1.5):
        with pytest.raises(tf.errors.InvalidArgumentError, match="a whole number of hundredths"):
            edit(seed=tf.constant(0, tf.int64), init_image=images, strength=tf.constant(strength))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"init_image must be uint8 \[n, 16"):
        edit(seed=tf.constant(0, tf.int64), init_image=tf.zeros((1, 8, 8, 3), tf.uint8),
             strength=tf.constant(0.5))  # fmt: skip


def _unchecked_readers(graph):
    """The ops of a traced signature `graph` that compute on an input its
    checks read, without waiting for them. A check is an `Assert` op, or the
    cond that guards one when its message holds tensors (an `AssertGuard`)."""
    ops = graph.get_operations()

    def ancestors(op, control=False):
        seen, stack = set(), [op]
        while stack:
            current = stack.pop()
            parents = [tensor.op for tensor in current.inputs]
            for parent in parents + (list(current.control_inputs) if control else []):
                if parent not in seen:
                    seen.add(parent)
                    stack.append(parent)
        return seen

    checks = {op for op in ops if op.type == "Assert" or op.name.endswith("/AssertGuard")}
    checking = checks.union(*(ancestors(op) for op in checks))
    inputs = {op for op in checking if op.type == "Placeholder"}
    return [op.name for op in ops if op not in checking and inputs & ancestors(op)
            and not checks & ancestors(op, control=True)]  # fmt: skip


@pytest.mark.parametrize("fixture", ["pixel", "classes", "text"])
def test_every_signature_checks_its_inputs_before_computing_on_them(fixture):
    # A graph orders an Assert only among stateful ops: an unchecked strength
    # of 0 once reached the strength table's gather first and failed there
    # ("indices = -1 is not in [0, 100)") instead of saying what is wrong.
    import tensorflow as tf

    import diffusion_keras as dk
    from diffusion_keras.config.sampling import sampling_settings
    from diffusion_keras.export.saved_model import _Graph, edit_graphs, endpoints

    model = dk.load_model(os.path.join(FIXTURES, f"{fixture}.keras"))
    chosen = sampling_settings(diffusion_steps=2)
    graph = _Graph(model, chosen["sampler"], 2, chosen["spacing"], chosen["eta"])
    checked = 0
    for name, (function, specs) in endpoints(graph, edit_graphs(model, graph)).items():
        traced = tf.function(function).get_concrete_function(*specs).graph
        checked += any(op.type == "Assert" for op in traced.get_operations())
        assert _unchecked_readers(traced) == [], name
    assert checked >= 2


def test_a_class_export_refuses_a_bad_input_with_its_own_message(tmp_path):
    import tensorflow as tf

    import diffusion_keras as dk
    from diffusion_keras.export import export_saved_model

    model = dk.load_model(os.path.join(FIXTURES, "classes.keras"))
    export_saved_model(model, str(tmp_path / "e"), diffusion_steps=2)
    signatures = tf.saved_model.load(str(tmp_path / "e")).signatures
    classes = model.num_classes
    good = dict(seed=tf.constant(0, tf.int64), num_images=tf.constant(1),
                class_index=tf.constant(0), guidance_scale=tf.constant(1.0))  # fmt: skip
    refused = [(dict(class_index=tf.constant(classes)), f"class_index must be < {classes}"),
               (dict(class_index=tf.constant(-1)), "class_index must be >= 0"),
               (dict(num_images=tf.constant(0)), "num_images must be >= 1"),
               (dict(guidance_scale=tf.constant(-1.0)), "guidance_scale must be >= 0")]
    for bad, message in refused:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            signatures["generate_class"](**{**good, **bad})
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_images must be >= 1"):
        signatures["generate"](seed=good["seed"], num_images=tf.constant(0))
    assert signatures["generate_class"](**good)["images"].shape[0] == 1


def test_an_export_told_no_sampler_bakes_in_generate_pys_default(tmp_path):
    import diffusion_keras as dk
    from diffusion_keras.config.sampling import SAMPLING_RECIPES
    from diffusion_keras.export import export_saved_model

    model = dk.load_model(os.path.join(FIXTURES, "pixel.keras"))
    export_saved_model(model, str(tmp_path / "default"))
    export_saved_model(model, str(tmp_path / "told"), diffusion_steps=3)
    baked = {name: json.loads((tmp_path / name / "generation.json").read_text())
             for name in ("default", "told")}  # fmt: skip
    fields = list(SAMPLING_RECIPES["default"])
    assert {f: baked["default"][f] for f in fields} == SAMPLING_RECIPES["default"]
    assert {f: baked["told"][f] for f in fields} == {**SAMPLING_RECIPES["default"],
                                                     "diffusion_steps": 3}  # fmt: skip


@pytest.mark.slow
def test_a_class_conditional_export_takes_the_class_and_the_guidance(tmp_path):
    model = os.path.join(FIXTURES, "classes.keras")
    exported = export_and_generate(tmp_path, model, "--steps", 4)
    for guidance in (1.0, 0.0, 2.5):
        written = tmp_path / f"written{guidance}"
        done = run_script("generate.py", model, "--seed", 3, "--num-images", 2, "--steps", 4,
                          "--class", "blue", "--guidance-scale", guidance, "--output-dir",
                          written, "--output", tmp_path / "grid.png", "--precision",
                          "float32")  # fmt: skip
        assert done.returncode == 0, done.stderr
        served = standalone(tmp_path, exported, 3, 2, "generate_class", 1, guidance)
        np.testing.assert_array_equal(served, written_pngs(written))


@pytest.mark.slow
def test_a_text_model_export_takes_the_prompt_as_text(tmp_path):
    model = os.path.join(FIXTURES, "text.keras")
    exported = export_and_generate(tmp_path, model, "--steps", 4)
    for prompt, negative, guidance in (("a red flower", "", 1.0),
                                       ("a blue flower", "a red flower", 3.0)):  # fmt: skip
        written = tmp_path / f"written{guidance}"
        flags = ["--negative-prompt", negative] if negative else []
        done = run_script("generate.py", model, "--seed", 3, "--num-images", 2, "--steps", 4,
                          "--prompt", prompt, "--guidance-scale", guidance, *flags,
                          "--output-dir", written, "--output", tmp_path / "grid.png",
                          "--precision", "float32")  # fmt: skip
        assert done.returncode == 0, done.stderr
        served = standalone(tmp_path, exported, 3, 2, "generate_prompt", prompt, negative,
                            guidance)  # fmt: skip
        np.testing.assert_array_equal(served, written_pngs(written))


def test_export_bakes_in_the_sampling_it_is_given(tmp_path):
    import tensorflow as tf

    import diffusion_keras as dk
    from diffusion_keras.config.sampling import SAMPLING_RECIPES
    from diffusion_keras.export import export_saved_model
    from diffusion_keras.utils.images import to_uint8

    model = dk.load_model(os.path.join(FIXTURES, "pixel.keras"))
    book = dict(sampler="ddim", diffusion_steps=5, spacing="uniform", eta=0.0)
    assert export_saved_model(model, str(tmp_path / "book"), **book) == [
        "generate", "generate_from_noise", "image_to_image", "inpaint"]
    served = tf.saved_model.load(str(tmp_path / "book")).signatures["generate"](
        seed=tf.constant(-4, tf.int64), num_images=tf.constant(2, tf.int32))["images"]
    np.testing.assert_array_equal(served.numpy(), to_uint8(model.generate(2, seed=-4, **book)))
    default = to_uint8(model.generate(2, seed=-4, **SAMPLING_RECIPES["default"]))
    assert not np.array_equal(served.numpy(), default)


@pytest.mark.slow
def test_the_book_model_exports_and_gives_generate_pys_images_without_the_package(tmp_path):
    from diffusion_keras import DiffusionModel

    model = DiffusionModel(image_size=64, seed=2)  # the book's network
    assert model.network.count_params() == 1_953_507
    model.adapt(np.random.default_rng(0).uniform(size=(8, 64, 64, 3)))
    # The last convolution starts at zero: give it weights, so that the
    # images are not the mean image whatever the arithmetic.
    last = model.ema_network.layers[-1]
    last.set_weights([np.random.default_rng(1).normal(0, 0.05, w.shape).astype("float32")
                      for w in last.get_weights()])  # fmt: skip
    model.save(tmp_path / "book.keras")
    steps = ["--steps", 3]
    exported = export_and_generate(tmp_path, tmp_path / "book.keras", *steps)
    written = tmp_path / "written"
    done = run_script("generate.py", tmp_path / "book.keras", "--seed", 1, "--num-images", 2,
                      *steps, "--output-dir", written, "--output", tmp_path / "grid.png",
                      "--precision", "float32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    served = standalone(tmp_path, exported, 1, 2)
    assert served.shape == (2, 64, 64, 3) and served.std() > 1.0
    np.testing.assert_array_equal(served, written_pngs(written))


def test_export_never_overwrites_and_says_what_it_cannot_do(tmp_path):
    model = os.path.join(FIXTURES, "pixel.keras")
    (tmp_path / "taken").mkdir()
    line = in_process_error([model, "--export", tmp_path / "taken"])
    assert "exists; choose a new folder" in line
    line = in_process_error([model, "--export", tmp_path / "new", "--seed", 3])
    assert line.endswith("--seed does not combine with --export: the exported signatures take "
                         "the seed, the class and the guidance as inputs (docs/guides/export.md)")
    line = in_process_error([model, "--onnx"])
    assert line.endswith("--onnx goes with --export DIR")
    line = in_process_error([model, "--export", tmp_path / "new", "--onnx", "--sampler", "heun",
                             "--precision", "float32"])  # fmt: skip
    assert "ONNX export takes the ddim and dpmpp_2m samplers, not heun" in line
    assert not (tmp_path / "new").exists()


def test_a_model_trained_long_exports_with_edms_sampler_unless_told(tmp_path):
    """generate.py's default for a model trained LONG_RUN_STEPS or more is
    the edm recipe; --recipe default still gives the default."""
    from diffusion_keras.config.sampling import LONG_RUN_STEPS, SAMPLING_RECIPES
    from diffusion_keras.models.saving import load_model

    model = load_model(os.path.join(FIXTURES, "pixel.keras"), compile=False)
    model.train_steps.assign(LONG_RUN_STEPS)
    path = tmp_path / "long.keras"
    model.save(path)
    for name, flags in (("edm", []), ("default", ["--recipe", "default"])):
        exported = export_and_generate(tmp_path / name, path, *flags)
        settings = json.loads((exported / "generation.json").read_text())
        wanted = SAMPLING_RECIPES[name]
        assert {k: settings[k] for k in wanted} == wanted


@pytest.mark.slow
def test_a_heun_export_gives_generate_pys_pixels_as_a_saved_model_and_in_litert(tmp_path):
    """EDM's sampler skips its second evaluation in the last step by a
    conditional inside the loop; the SavedModel and LiteRT run it."""
    model = os.path.join(FIXTURES, "pixel.keras")
    flags = ["--sampler", "heun", "--steps", "3", "--eta", "1"]
    exported = export_and_generate(tmp_path, model, "--litert", *flags)
    settings = json.loads((exported / "generation.json").read_text())
    assert (settings["sampler"], settings["spacing"], settings["eta"]) == ("heun", "karras", 1.0)
    written = tmp_path / "written"
    done = run_script("generate.py", model, "--seed", 5, "--num-images", 3, "--output-dir",
                      written, "--output", tmp_path / "grid.png", "--precision", "float32",
                      *flags)  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = written_pngs(written)
    np.testing.assert_array_equal(standalone(tmp_path, exported, 5, 3), expected)
    litert = run_portable(tmp_path, exported, 5, 3, "litert").astype(int)
    assert np.abs(litert - expected.astype(int)).max() <= 1  # measured: 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_export_on_another_backend_is_one_clear_line(tmp_path):
    env_model = os.path.join(FIXTURES, "pixel.keras")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "generate.py"), env_model, "--export",
         str(tmp_path / "x")], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3"),
    )  # fmt: skip
    assert "run it with KERAS_BACKEND=tensorflow (this process runs on jax)" in one_line_error(done)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None
                    or importlib.util.find_spec("onnxruntime") is None,
                    reason="ONNX export needs pip install -e .[export]")  # fmt: skip
def test_litert_and_onnx_files_give_generate_pys_pixels_without_the_package(tmp_path):
    model = os.path.join(FIXTURES, "pixel.keras")
    exported = export_and_generate(tmp_path, model, "--litert", "--onnx")
    assert {"generate.tflite", "generate.onnx", "unet.onnx", "noise.py"} <= set(
        os.listdir(exported))
    written = tmp_path / "written"
    done = run_script("generate.py", model, "--seed", 5, "--num-images", 3, "--output-dir",
                      written, "--output", tmp_path / "grid.png",
                      "--precision", "float32")  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = written_pngs(written)
    # onnxruntime runs TensorFlow's arithmetic on this model bit for bit.
    np.testing.assert_array_equal(run_portable(tmp_path, exported, 5, 3, "onnx"), expected)
    # LiteRT's kernels (XNNPACK) add in another order: float32 rounding, which
    # can move a pixel across a rounding boundary of the 8-bit scale, by one level.
    litert = run_portable(tmp_path, exported, 5, 3, "litert").astype(int)
    difference = np.abs(litert - expected.astype(int))
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.01


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None
                    or importlib.util.find_spec("onnxruntime") is None,
                    reason="ONNX export needs pip install -e .[export]")  # fmt: skip
def test_the_onnx_network_is_the_models_network(tmp_path):
    import onnxruntime

    import diffusion_keras as dk
    from diffusion_keras.export import export_saved_model

    model = dk.load_model(os.path.join(FIXTURES, "classes.keras"))
    export_saved_model(model, str(tmp_path / "e"), onnx=True)
    session = onnxruntime.InferenceSession(str(tmp_path / "e" / "unet.onnx"))
    assert [i.name for i in session.get_inputs()] == ["noisy_images", "noise_variances",
                                                      "class_labels"]  # fmt: skip
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((3, 16, 16, 3)).astype("float32"),
              rng.uniform(0.05, 0.95, (3, 1, 1, 1)).astype("float32"),
              np.array([0, 1, 2], "int32")]  # fmt: skip
    expected = model.ema_network(inputs, training=False).numpy()
    got = session.run(None, dict(zip(["noisy_images", "noise_variances", "class_labels"],
                                     inputs)))[0]  # fmt: skip
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_bfloat16_export_gives_bfloat16_pixels_and_refuses_litert(tmp_path):
    import tensorflow as tf

    import diffusion_keras as dk
    from diffusion_keras.export import export_saved_model
    from diffusion_keras.utils.images import to_uint8

    model = dk.load_model(os.path.join(FIXTURES, "pixel.keras"), precision="mixed_bfloat16")
    settings = dict(sampler="dpmpp_2m", diffusion_steps=4, spacing="log_snr", eta=1.0)
    with pytest.raises(ValueError, match="LiteRT and ONNX have no mixed_bfloat16 convolutions"):
        export_saved_model(model, str(tmp_path / "portable"), litert=True, **settings)
    assert not os.listdir(tmp_path)
    export_saved_model(model, str(tmp_path / "bf16"), **settings)
    generate = tf.saved_model.load(str(tmp_path / "bf16")).signatures["generate"]
    graph = generate.graph.as_graph_def()
    convolutions = [node for function in graph.library.function for node in function.node_def
                    if node.op == "Conv2D"]  # fmt: skip
    assert "bfloat16" in {tf.dtypes.as_dtype(node.attr["T"].type).name for node in convolutions}
    served = generate(seed=tf.constant(9, tf.int64), num_images=tf.constant(2, tf.int32))["images"]
    # Where bfloat16 is emulated the graph gives generate.py's pixels bit for bit.
    # Where the CPU has native bfloat16 (AVX-512 BF16), the saved graph's fused
    # oneDNN kernels round differently from eager ones: measured, 10 of 1,536
    # values one level apart, none further.
    eager = to_uint8(model.generate(2, seed=9, **settings))
    difference = np.abs(served.numpy().astype(int) - eager)
    assert difference.max() <= 1
    assert (difference > 0).mean() < 0.02
