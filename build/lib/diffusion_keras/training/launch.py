"""Launch K local workers on 127.0.0.1 to try multi-worker training on one machine.

    python -m diffusion_keras.training.launch --workers 2 -- train.py --strategy multiworker ...

Each worker runs the given Python script with its own `TF_CONFIG` (a cluster of
`--workers` tasks on free loopback ports); worker 0 is the chief. The exit code
is the first non-zero exit code of a worker, or 0.

SIGTERM to the launcher is passed on to every worker (they stop at the same
step and save; see train.py). When a worker fails, or `--timeout` passes, the
others get SIGTERM and, `--grace` seconds later, SIGKILL.
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time


def free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def tf_configs(workers):
    """One `TF_CONFIG` string per worker of a loopback cluster."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    return [
        json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
        for i in range(workers)
    ]


def launch_local_workers(command, workers=2, timeout=None, env=None, log_dir=None, grace=60.0):
    """Runs `command` (a list: script and arguments) in `workers` Python
    processes, each with its own TF_CONFIG. Returns their exit codes. When
    `timeout` seconds pass or one fails, the others get SIGTERM, then SIGKILL
    after `grace` seconds."""
    processes = []
    for index, tf_config in enumerate(tf_configs(workers)):
        worker_env = dict(env or os.environ, TF_CONFIG=tf_config)
        output = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            output = open(os.path.join(log_dir, f"worker_{index}.log"), "w")
        processes.append(
            subprocess.Popen(
                [sys.executable, *command], env=worker_env, stdout=output,
                stderr=subprocess.STDOUT if output else None,
            )
        )  # fmt: skip

    def pass_on(signum, frame):
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, pass_on)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in processes):
            failed = any(p.returncode not in (None, 0) for p in processes)
            if failed or (deadline is not None and time.monotonic() > deadline):
                stop(processes, grace)
                break
            time.sleep(0.2)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [p.returncode for p in processes]


def stop(processes, grace):
    """SIGTERM to the running `processes`, SIGKILL to those still running
    `grace` seconds later."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    end = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(end - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds before all stop")
    parser.add_argument("--log-dir", default=None, help="write each worker's output here")
    parser.add_argument(
        "--grace", type=float, default=60.0,
        help="seconds between SIGTERM and SIGKILL when stopping workers (default 60)",
    )  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="script and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.workers < 1:
        parser.error("give --workers >= 1 and a script to run, e.g. -- train.py ...")
    codes = launch_local_workers(
        command, args.workers, args.timeout, log_dir=args.log_dir, grace=args.grace
    )
    print(f"worker exit codes: {codes}")
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    raise SystemExit(main())
