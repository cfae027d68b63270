"""tf.distribute: N replicas train exactly as one device, on one machine and
across worker processes on 127.0.0.1."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_script, write_png_folder
from diffusion_keras.models.saving import load_model
from diffusion_keras.training.distribute import make_strategy
from diffusion_keras.training.launch import launch_local_workers, tf_configs
from diffusion_keras.utils.errors import UsageError

# Each of these starts training processes: the slow tier (`-m slow`).
pytestmark = pytest.mark.slow

ONE_STEP_ON_TWO_DEVICES = """
from diffusion_keras.training.distribute import make_strategy
strategy = make_strategy("mirrored", cpu_replicas=2)
import numpy as np, tensorflow as tf
from conftest import blob_images, tiny_model
data = blob_images(16)

def one_step(strategy):
    with strategy.scope():
        model = tiny_model(seed=3)
        model.adapt(data)
    start = [w.copy() for w in model.network.get_weights()]
    model.fit(data, batch_size=16, epochs=1, verbose=0, shuffle=False)
    return model, start

one, start = one_step(tf.distribute.OneDeviceStrategy("/cpu:0"))
two, _ = one_step(strategy)
assert two.distribute_strategy.num_replicas_in_sync == 2
for name in ["network", "ema_network"]:
    a, b = getattr(one, name).get_weights(), getattr(two, name).get_weights()
    print(name, max(float(np.abs(x - y).max()) for x, y in zip(a, b)))
print("moved", max(float(np.abs(x - y).max()) for x, y in zip(one.network.get_weights(), start)))
"""


def test_one_step_on_two_devices_equals_one_device():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", ONE_STEP_ON_TWO_DEVICES],  # `-c` imports from its folder
        capture_output=True, text=True, env=env, timeout=300, cwd=os.path.join(ROOT, "tests"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = dict(line.split() for line in result.stdout.strip().splitlines())
    print(figures)
    moved = float(figures["moved"])
    assert moved > 1e-3  # the step really moved the weights
    # Equal within float tolerance (a loss not divided by the replica count
    # would move the weights twice as far).
    assert float(figures["network"]) < 1e-6 * max(1.0, moved * 100)
    assert float(figures["ema_network"]) < 1e-6 * max(1.0, moved * 100)


TINY_FLAGS = [
    "--image-size", 16, "--widths", "8,16", "--block-depth", 1, "--embedding-dims", 8,
    "--batch-size", 8, "--dataset-repetitions", 1, "--plot-diffusion-steps", 2,
    "--plot-images", 2, "--verbose", 2, "--seed", 4,
    # Conditional, with much label dropout: labels and the dropout's draws
    # must be sliced across workers as the images and noises are.
    "--conditional", "--label-dropout", 0.5,
    # float32 on every CPU: with native bfloat16 (auto's choice on AVX-512 BF16)
    # the sums' different order across workers moved a weight by 2.9e-3.
    "--precision", "float32",
]  # fmt: skip


def max_difference(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a.get_weights(), b.get_weights()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A single-process run, a two-worker run, and a two-worker run that is
    stopped after one epoch and resumed, all on the same data and seed, of a
    class-conditional model (the folder has two class subfolders)."""
    root = tmp_path_factory.mktemp("distribute")
    data = str(root / "data")
    write_png_folder(data, count=32)
    flags = ["--data", data, *TINY_FLAGS]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

    single = root / "single"
    result = run_script("train.py", "--output", single, "--strategy", "default", "--epochs", 2,
                        *flags)  # fmt: skip
    assert result.returncode == 0, result.stderr

    def workers(output, *extra):
        command = [os.path.join(ROOT, "train.py"), "--strategy", "multiworker",
                   "--output", str(output), *map(str, extra)]  # fmt: skip
        start = time.monotonic()
        codes = launch_local_workers(
            command, 2, timeout=300, env=env, log_dir=str(output) + "_logs"
        )
        assert codes == [0, 0], open(str(output) + "_logs/worker_0.log").read()[-3000:]
        return time.monotonic() - start

    multi = root / "multi"
    seconds = workers(multi, "--epochs", 2, *flags)
    print(f"two workers on 127.0.0.1, 2 epochs of 4 steps: {seconds:.1f}s")
    resumed = root / "resumed"
    workers(resumed, "--epochs", 1, *flags)
    workers(resumed, "--resume", "--epochs", 2)
    return {"single": single, "multi": multi, "resumed": resumed, "flags": flags, "env": env}


def test_two_workers_end_identical_and_match_one_process(runs):
    chief = load_model(str(runs["multi"] / "model.keras"))
    worker = load_model(str(runs["multi"] / ".worker_1" / "model.keras"))
    single = load_model(str(runs["single"] / "model.keras"))
    assert max_difference(chief, worker) == 0.0
    difference = max_difference(chief, single)
    print(f"two workers vs one process, largest weight difference: {difference:.2e}")
    assert difference < 2e-3
    assert int(chief.train_steps.numpy()) == int(single.train_steps.numpy()) == 8
    assert (runs["multi"] / "samples" / "epoch_002.png").exists()
    assert not (runs["multi"] / ".worker_1" / "samples").exists()


def test_a_multiworker_run_resumes(runs):
    straight = load_model(str(runs["multi"] / "model.keras"))
    resumed = load_model(str(runs["resumed"] / "model.keras"))
    assert int(resumed.train_steps.numpy()) == 8
    assert max_difference(straight, resumed) < 1e-5


def test_tf_configs_describe_a_loopback_cluster():
    import json

    configs = [json.loads(c) for c in tf_configs(3)]
    addresses = configs[0]["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [c["task"]["index"] for c in configs] == [0, 1, 2]


def test_multiworker_without_tf_config_is_refused(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="TF_CONFIG"):
        make_strategy("multiworker")
    with pytest.raises(UsageError, match="unknown strategy 'ring'"):
        make_strategy("ring")


def start_workers(output, flags, env, resume=False):
    """Two workers of a loopback cluster as separate processes, with pipes."""
    resume = ["--resume"] if resume else []
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--strategy", "multiworker",
               "--output", str(output), *resume, *map(str, flags)]  # fmt: skip
    return [
        subprocess.Popen(
            command,
            env=dict(env, TF_CONFIG=config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for config in tf_configs(2)
    ]


def steps_logged(output):
    try:
        with open(os.path.join(output, "steps.csv")) as handle:
            return [int(row["step"]) for row in csv.DictReader(handle)]
    except (OSError, ValueError, KeyError):
        return []


def wait_for_step(output, step, processes, timeout=300):
    deadline = time.monotonic() + timeout
    while not any(s >= step for s in steps_logged(output)):
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        assert time.monotonic() < deadline, "no training step logged"
        time.sleep(0.02)


def messages(stderr):
    return [line for line in stderr.strip().splitlines() if line.startswith("train.py")]


def test_sigterm_and_a_killed_worker_in_a_multiworker_run(runs, tmp_path):
    """SIGTERM to one worker stops both at the same step (exit 143); a
    SIGKILLed worker makes the other exit with one line within 60 s; and
    --resume of the whole job then ends where an uninterrupted run ends."""
    output = tmp_path / "run"
    flags = [*runs["flags"], "--epochs", 2, "--checkpoint-every", 1]
    processes = start_workers(output, flags, runs["env"])
    wait_for_step(output, 1, processes)
    processes[1].send_signal(signal.SIGTERM)
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [143, 143], results
    lines = [messages(err) for _, err in results]
    assert all(len(found) == 1 and "stopped by SIGTERM after step" in found[0] for found in lines)
    # The same position on both: "after step S of epoch E".
    assert lines[0][0].split(";")[0] == lines[1][0].split(";")[0], lines

    processes = start_workers(output, flags, runs["env"], resume=True)
    done = len(steps_logged(output))
    wait_for_step(output, max(steps_logged(output)) + 1, processes)
    processes[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = processes[0].communicate(timeout=120)
    seconds = time.monotonic() - killed
    processes[1].wait()
    print(f"the chief noticed its killed peer after {seconds:.1f} s")
    assert processes[0].returncode not in (0, None) and seconds < 60
    found = messages(err)
    assert len(found) == 1 and "lost contact with another worker" in found[0], err
    assert len(steps_logged(output)) > done

    processes = start_workers(output, flags, runs["env"], resume=True)
    for process in processes:
        process.communicate(timeout=300)
    assert [p.returncode for p in processes] == [0, 0]
    straight = load_model(str(runs["multi"] / "model.keras"))
    resumed = load_model(str(output / "model.keras"))
    assert int(resumed.train_steps.numpy()) == 8
    assert max_difference(straight, resumed) < 1e-5


def test_sigterm_under_the_mirrored_strategy(tmp_path):
    """Two logical CPU devices in one process (Keras's fit): SIGTERM saves the
    position and exits 143, and --resume finishes the run."""
    data = str(tmp_path / "data")
    write_png_folder(data, count=32)
    flags = ["--data", data, *TINY_FLAGS, "--cpu-replicas", 2, "--epochs", 3]
    output = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--output", str(output),
               *map(str, flags)]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    wait_for_step(output, 2, [process])
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "stopped by SIGTERM after step" in messages(err)[0]
    result = run_script("train.py", "--output", output, "--resume")
    assert result.returncode == 0, result.stderr
    assert int(load_model(str(output / "model.keras")).train_steps.numpy()) == 12
    assert sorted(set(steps_logged(output))) == list(range(1, 13))
