"""The CPU kernels the package chooses before TensorFlow is imported."""

import os
import subprocess
import sys

import pytest

from diffusion_keras.utils.runtime import ONEDNN_VARIABLE, onednn_choice

# Each of these starts training processes: the slow tier (`-m slow`).
pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "environ, imported, machine, expected",
    [
        ({}, False, "x86_64", "1"),  # AVX2-only CPUs: TensorFlow alone would leave it off
        ({}, False, "AMD64", "1"),
        ({ONEDNN_VARIABLE: "0"}, False, "x86_64", None),  # the user's word stands
        ({ONEDNN_VARIABLE: "1"}, False, "x86_64", None),
        ({}, True, "x86_64", None),  # too late: TensorFlow has read the variable
        ({}, False, "aarch64", None),  # TensorFlow's own rule on ARM
    ],
)
def test_onednn_choice(environ, imported, machine, expected):
    assert onednn_choice(environ, imported, machine) == expected


def onednn_in_fresh_process(setting, import_tensorflow_first=False):
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_VARIABLE}
    env.update(TF_CPP_MIN_LOG_LEVEL="3")
    if setting is not None:
        env[ONEDNN_VARIABLE] = setting
    code = (
        ("import tensorflow\n" if import_tensorflow_first else "")
        + "import diffusion_keras\nfrom diffusion_keras.utils.runtime import onednn_enabled\n"
        + "print(onednn_enabled())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[-1] == "True"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the rule sets oneDNN on x86-64")
def test_import_turns_onednn_on_unless_told_otherwise():
    assert onednn_in_fresh_process(None)
    assert not onednn_in_fresh_process("0")
    assert onednn_in_fresh_process("1")
