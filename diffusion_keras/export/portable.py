"""LiteRT and ONNX files beside an exported SavedModel.

Neither format has TensorFlow's stateless random op (nor LiteRT the float64
arithmetic of the noise), so both take the noise as inputs: the signatures
`generate_from_noise` (and `generate_class_from_noise`) of the SavedModel,
whose whole sampling loop converts. The export folder carries `noise.py`, a
copy of `diffusion_keras.sampling.noise` that needs numpy alone, to draw the
noise of a seed as `generate` does:

    from noise import initial_noise, step_noises
    initial = initial_noise((64, 64, 3), 4, seed=42)
    steps = step_noises((64, 64, 3), 42, range(4), 10)   # 10 steps, eta > 0

- `generate.tflite`: the from-noise signatures, TensorFlow Lite's built-in
  ops only (`tf.lite.Interpreter` or `ai_edge_litert` runs it).
- `generate.onnx`: the loop of `generate_from_noise`, for onnxruntime;
  `unet.onnx`: the EMA network alone, inputs `noisy_images` and
  `noise_variances` (and `class_labels`). (The class signature's loop does
  not load in onnxruntime yet; see `write_onnx`.)
"""

import os
import shutil

from diffusion_keras.sampling import noise

FROM_NOISE = ("generate_from_noise", "generate_class_from_noise")
ONNX_OPSET = 17


def write_noise_module(directory):
    """`DIR/noise.py`: the seeded noise in numpy, for LiteRT and ONNX users."""
    shutil.copyfile(noise.__file__, os.path.join(directory, "noise.py"))


def write_litert(saved_model, path, signatures):
    """The from-noise signatures of `saved_model` (a folder) as one LiteRT
    file with built-in ops only."""
    import tensorflow as tf

    keys = [name for name in signatures if name in FROM_NOISE]
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=keys)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        flat = converter.convert()
    except Exception as error:  # the converter's errors are pages of MLIR
        first = next((line.strip() for line in str(error).splitlines() if "error:" in line),
                     str(error).strip().splitlines()[0] if str(error).strip() else "")
        raise ValueError(f"the LiteRT converter failed: {first.split('error:')[-1].strip()}"
                         ) from None  # fmt: skip
    with open(path, "wb") as handle:
        handle.write(flat)


def write_onnx(graph, directory, endpoints):
    """`generate.onnx` from the `generate_from_noise` endpoint, and
    `unet.onnx`, into `directory`."""
    import tensorflow as tf

    try:
        import tf2onnx
    except ImportError:
        raise ValueError("ONNX export needs tf2onnx, onnx and onnxruntime: "
                         "pip install -e .[export]") from None  # fmt: skip
    # The class signature's `tf.case` around loops comes out of tf2onnx as an
    # If around Loops that onnxruntime 1.31 rejects (shape inference of the
    # convolutions inside), so ONNX has the unconditional loop and the U-Net.
    for name, (function, specs) in endpoints.items():
        if name == "generate_from_noise":
            traced = tf.function(function, input_signature=specs, autograph=False)
            target = os.path.join(directory, name.removesuffix("_from_noise") + ".onnx")
            tf2onnx.convert.from_function(traced, input_signature=specs, opset=ONNX_OPSET,
                                          output_path=target)  # fmt: skip
    model = graph.model
    specs = [tf.TensorSpec((None, *graph.shape), tf.float32, "noisy_images"),
             tf.TensorSpec((None, 1, 1, 1), tf.float32, "noise_variances")]  # fmt: skip
    if len(model.ema_network.inputs) > 2:
        specs.append(tf.TensorSpec((None,), tf.int32, "class_labels"))
    network = tf.function(lambda *inputs: model.ema_network(list(inputs), training=False),
                          input_signature=specs, autograph=False)  # fmt: skip
    tf2onnx.convert.from_function(network, input_signature=specs, opset=ONNX_OPSET,
                                  output_path=os.path.join(directory, "unet.onnx"))  # fmt: skip
