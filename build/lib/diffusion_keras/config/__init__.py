"""Every setting of the package, each written once (`setting`), with no TensorFlow.

`ModelConfig` (a `DiffusionModel`'s network and diffusion settings) and
`TrainConfig` (a run's) are the homes; `train.py`'s flags, `get_config` and
the docs' flag reference derive from them.
"""

from diffusion_keras.config.model import DiffusionConfig, ModelConfig, NetworkConfig  # noqa: F401
from diffusion_keras.config.run import GROUPS, RECIPES, RESUMABLE, TrainConfig  # noqa: F401
