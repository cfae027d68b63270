"""Exported files against the package's own `generate`: time and pixels.

    python bench/export.py                     # the book's network at 64x64
    python bench/export.py --model RUN/model.keras --num-images 4

In one process: exports the model with `generate.py`'s default sampling
(`export_saved_model(..., litert=True, onnx=True)`), then times, alternately
and as the median of `--repeats` after a warm-up each:

- the package's `model.generate(N, seed)` (the baseline),
- the SavedModel's `generate(seed, N)`,
- LiteRT's `generate_from_noise` under `tf.lite.Interpreter`,
- ONNX's `generate.onnx` under onnxruntime,

the last two on the noise that the export's `noise.py` draws for the seed;
and for a pixel model the two edits (strength 0.6, a square mask), the
package's `model.edit` (their baseline) against the `image_to_image` and
`inpaint` signatures. Prints each one's time over its baseline's and how far
its uint8 pixels are from the baseline's. Also says whether the `generate` signature itself (the
noise in the graph) converts to LiteRT's built-in ops. Run by hand, never by CI.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def folder_megabytes(folder, names=None):
    total = sum(os.path.getsize(os.path.join(root, name))
                for root, _, files in os.walk(folder) for name in files
                if names is None or name in names)  # fmt: skip
    return total / 1e6


def whole_signature_in_builtins(folder):
    """Whether `generate` (noise drawn in the graph) converts to LiteRT's
    built-in ops; if not, the ops that have no kernel."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=["generate"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        converter.convert()
    except Exception as error:  # the converter's errors are of many kinds
        # It lists the ops it has no kernel for, a line each ("\ttf.Sin(...").
        found = sorted({line.strip().split("(")[0] + ("(f64)" if "f64" in line else "")
                        for line in str(error).splitlines() if line.strip().startswith("tf.")})
        return "does not convert; no LiteRT kernel for " + ", ".join(found)
    return "converts"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model file (default: the book's network, untrained "
                        "but for random last-layer weights)")  # fmt: skip
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", default="float32")
    args = parser.parse_args()
    from quality import package_first

    package_first()
    import numpy as np
    import onnxruntime
    import tensorflow as tf

    from diffusion_keras import DiffusionModel, load_model
    from diffusion_keras.config.sampling import SAMPLING_RECIPES
    from diffusion_keras.export import export_saved_model
    from diffusion_keras.sampling import noise
    from diffusion_keras.utils.images import to_uint8

    flags = " ".join(sorted({f for f in open("/proc/cpuinfo").read().split() if "avx512" in f}))
    print(f"{os.cpu_count()} CPUs; AVX-512 flags: {flags or 'none'}; precision {args.precision}")
    if args.model:
        model = load_model(args.model, precision=args.precision)
    else:
        model = DiffusionModel(image_size=64, seed=0, precision=args.precision)
        model.adapt(np.random.default_rng(0).uniform(size=(16, 64, 64, 3)))
        # The book's last convolution starts at zero: give it weights, so that
        # the images are not the mean image whatever the arithmetic.
        last = model.ema_network.layers[-1]
        last.set_weights([np.random.default_rng(1).normal(0, 0.05, w.shape).astype("float32")
                          for w in last.get_weights()])  # fmt: skip
    settings = dict(SAMPLING_RECIPES["default"])
    if getattr(model, "student_steps", 0):
        settings = model.sampling_defaults()
    folder = os.path.join(tempfile.mkdtemp(), "export")
    begin = time.perf_counter()
    export_saved_model(model, folder, litert=True, onnx=True, **settings)
    print(f"export with LiteRT and ONNX: {time.perf_counter() - begin:.1f} s ({settings})")
    sizes = {"saved model": folder_megabytes(folder, None) - folder_megabytes(
        folder, {"generate.tflite", "generate.onnx", "unet.onnx"})}  # fmt: skip
    for name in ("generate.tflite", "generate.onnx", "unet.onnx"):
        sizes[name] = folder_megabytes(folder, {name})
    print("sizes: " + ", ".join(f"{name} {mb:.1f} MB" for name, mb in sizes.items()))

    count, seed, shape = args.num_images, args.seed, tuple(model.sample_shape)
    steps = settings["diffusion_steps"] if settings.get("eta", 0.0) > 0 else 1
    noises = dict(initial_noise=noise.initial_noise(shape, count, seed),
                  step_noises=noise.step_noises(shape, seed, range(count), steps))  # fmt: skip
    served = tf.saved_model.load(folder).signatures["generate"]
    interpreter = tf.lite.Interpreter(model_path=os.path.join(folder, "generate.tflite"))
    litert = interpreter.get_signature_runner("generate_from_noise")
    session = onnxruntime.InferenceSession(os.path.join(folder, "generate.onnx"))
    signatures = tf.saved_model.load(folder).signatures
    runs = {
        "generate": lambda: to_uint8(model.generate(count, seed=seed, **settings)),
        "saved model": lambda: served(seed=tf.constant(seed, tf.int64),
                                      num_images=tf.constant(count, tf.int32))["images"].numpy(),
        "litert": lambda: litert(**noises)["images"],
        "onnx": lambda: session.run(None, noises)[0],
    }  # fmt: skip
    baselines = dict.fromkeys(runs, "generate")
    if "inpaint" in signatures:
        rng = np.random.default_rng(seed)
        photos = (rng.uniform(size=(count, *shape)) * 255).astype(np.uint8)
        masks = np.zeros((count, *shape[:2], 1), np.uint8)
        masks[:, shape[0] // 4 : 3 * shape[0] // 4, shape[1] // 4 : 3 * shape[1] // 4] = 255
        image_to_image = dict(settings, eta=0.0)
        inpaint = dict(SAMPLING_RECIPES["inpaint"])
        edit_inputs = dict(seed=tf.constant(seed, tf.int64), init_image=tf.constant(photos),
                           strength=tf.constant(0.6))  # fmt: skip
        runs.update({
            "edit": lambda: to_uint8(model.edit(photos / np.float32(255), strength=0.6,
                                                seed=seed, **image_to_image)),
            "image_to_image": lambda: signatures["image_to_image"](**edit_inputs)[
                "images"].numpy(),
            "inpaint (edit)": lambda: to_uint8(model.edit(
                photos / np.float32(255), strength=0.6, mask=masks > 127, seed=seed,
                **inpaint)),
            "inpaint": lambda: signatures["inpaint"](mask=tf.constant(masks), **edit_inputs)[
                "images"].numpy(),
        })  # fmt: skip
        baselines.update({"edit": "edit", "image_to_image": "edit",
                          "inpaint (edit)": "inpaint (edit)", "inpaint": "inpaint (edit)"})
    outputs = {name: run() for name, run in runs.items()}  # warm-up: traces and compiles
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            begin = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - begin)
    for name in runs:
        seconds, against = statistics.median(times[name]), baselines[name]
        baseline = statistics.median(times[against])
        difference = np.abs(outputs[name].astype(int) - outputs[against].astype(int))
        print(f"{name:14s} {seconds:7.3f} s for {count} images (median of {args.repeats}), "
              f"{seconds / baseline:.3f}x {against}; max difference {difference.max()} levels, "
              f"{np.mean(difference > 0):.5f} of values differ")  # fmt: skip
    print(f"LiteRT, the generate signature (noise in the graph): "
          f"{whole_signature_in_builtins(folder)}")  # fmt: skip


if __name__ == "__main__":
    main()
