"""The README and the docs stay true: short, with every command run at a tiny size."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import BACKENDS, ROOT, write_png_folder

README = os.path.join(ROOT, "README.md")
# Appended to every README training command: later flags win, so the command runs as
# written at a size that takes seconds.
TINY_TRAIN = ["--image-size", "16", "--widths", "8,16", "--block-depth", "1",
              "--embedding-dims", "8", "--epochs", "1", "--dataset-repetitions", "1",
              "--batch-size", "8", "--plot-images", "2", "--plot-diffusion-steps", "2",
              "--text-encoder-epochs", "1", "--verbose", "0"]  # fmt: skip
TINY_GENERATE = ["--num-images", "2", "--steps", "2", "--no-progress"]
# Run by CI itself (`.ci/run`), not by this test.
SET_UP = ("pip install", "ruff check", "python -m pytest", "mkdocs", "KERAS_BACKEND=")


def readme_commands():
    """Every command in the README's bash blocks, in order (`&&` chains split,
    continuation lines joined)."""
    text = open(README).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            commands += [part.strip() for part in line.split(" && ") if part.strip()]
    return commands


def test_the_readme_is_a_screenful_of_steps():
    lines = open(README).read().splitlines()
    assert len(lines) <= 200
    # A screenful: the install command, a command that gives a recognisable picture,
    # how long it takes, and how to train on one's own folder.
    first_screen = "\n".join(lines[:60])
    for needed in ["pip install -r requirements.txt", "python train.py --image-size 32",
                   "minutes", "--data path/to/your/images", "at least one batch"]:  # fmt: skip
        assert needed in first_screen, needed


def test_ci_runs_the_readme_development_command():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    lines = open(README).read().splitlines()
    development = [line for line in lines if line.startswith("pip install") and "ruff" in line]
    assert len(development) == 1 and development[0] in ci.splitlines()
    for command in readme_commands():
        if command.startswith(SET_UP):
            assert command in ci, f"{command!r} is in the README but not in .ci/run"


def test_the_notebooks_name_the_one_repository():
    name = open(os.path.join(ROOT, "notebooks", "REPOSITORY")).read().strip()
    for file in sorted(os.listdir(os.path.join(ROOT, "notebooks"))):
        if not file.endswith(".ipynb"):
            continue
        notebook = json.load(open(os.path.join(ROOT, "notebooks", file)))
        text = "".join("".join(cell["source"]) for cell in notebook["cells"])
        assert f'REPO_URL = "https://github.com/{name}"' in text, file
        for badge in re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/", text):
            assert badge == name, file


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_readme_command_runs_at_a_tiny_size(tmp_path, backend):
    write_png_folder(str(tmp_path / "path" / "to" / "your" / "images"), count=16)
    Image.fromarray((np.random.default_rng(0).uniform(size=(20, 20, 3)) * 255).astype(np.uint8)
                    ).save(tmp_path / "photo.png")  # fmt: skip
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
    ran = 0
    for command in readme_commands():
        if command.startswith(SET_UP) or command.startswith("python notebooks/"):
            continue
        words = shlex.split(command)
        assert words[0] == "python" and words[1] in ("train.py", "generate.py"), command
        args = words[2:]
        if words[1] == "train.py":
            args += TINY_TRAIN
            if "--data" not in args:
                args += ["--data", "builtin:flowers:64"]
            if "--captions" in args:
                args += ["--attention-levels", "1"]
        else:
            args += TINY_GENERATE
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, words[1]), *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stderr[-2000:])
        ran += 1
    assert ran >= 6
