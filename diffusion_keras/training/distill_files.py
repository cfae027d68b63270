"""The files of a distillation directory (`diffusion_keras.training.distill`):
its paths, its rounds, and refusing one that holds a distillation. Nothing
here imports TensorFlow or Keras, so `distill.py` checks its directory first."""

import csv
import json
import os

from diffusion_keras.training.run_files import claim_run_directory, existing_run


def round_steps(from_steps, steps, first_substeps=2):
    """The student steps of each round: from_steps / first_substeps, then
    halving down to steps; raises `ValueError` unless that first student's
    steps are steps times a power of 2 (above 1 where the first round
    halves)."""
    if int(first_substeps) < 2:
        raise ValueError(f"--first-substeps {first_substeps}: the teacher takes at least 2 steps "
                         "per student step")  # fmt: skip
    first, remainder = divmod(int(from_steps), int(first_substeps))
    ratio, rest = divmod(first, int(steps))
    if remainder or rest or ratio < 1 or ratio & (ratio - 1):
        if int(first_substeps) == 2:
            raise ValueError(
                f"each round halves the steps: --from-steps {from_steps} must be --steps "
                f"{steps} times 2, 4, 8, ..."
            )
        raise ValueError(
            f"the first round cuts each student step in {first_substeps}, then each round "
            f"halves the steps: --from-steps {from_steps} must be --steps {steps} times "
            f"{first_substeps}, {2 * int(first_substeps)}, {4 * int(first_substeps)}, ..."
        )
    rounds, current = [first], first
    while current > steps:
        current //= 2
        rounds.append(current)
    return rounds


def distill_paths(output):
    return {
        "config": os.path.join(output, "config.json"),
        "rounds": os.path.join(output, "rounds"),
        "rounds_csv": os.path.join(output, "rounds.csv"),
        "model": os.path.join(output, "model.keras"),
    }


def round_dir(output, student_steps):
    return os.path.join(distill_paths(output)["rounds"], f"steps_{student_steps:03d}")


def teacher_run_settings(teacher_path):
    """`dict(data, center_crop, batch_size)` of the run that trained
    `teacher_path`, from the `config.json` beside it, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(teacher_path)), "config.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        return None
    if "data" not in saved:
        return None
    return dict(
        data=saved["data"],
        center_crop=bool(saved.get("center_crop", False)),
        batch_size=saved.get("batch_size"),
    )


def finished_rounds(path):
    if not os.path.exists(path):
        return {}
    with open(path, newline="") as handle:
        return {int(row["steps"]): row for row in csv.DictReader(handle)}


def record_round(path, row):
    rows = finished_rounds(path)
    rows[int(row["steps"])] = row
    temporary = path + ".tmp"
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        for steps in sorted(rows, reverse=True):
            writer.writerow(rows[steps])
    os.replace(temporary, path)


def _holds_distillation(output):
    """A description of the distillation in `output`, or None."""
    paths = distill_paths(output)
    if os.path.exists(paths["model"]):
        return f"its student {paths['model']}"
    if os.path.isdir(paths["rounds"]):
        for name in sorted(os.listdir(paths["rounds"])):
            where = existing_run(os.path.join(paths["rounds"], name))
            if where is not None:
                return f"round {name}: {where}"
    return None


def claim_distill_directory(output, resume, overwrite):
    """`claim_run_directory` for a distillation directory and its rounds."""
    claim_run_directory(
        output, resume, overwrite, kind="distillation",
        holds=lambda path: _holds_distillation(path) or existing_run(path),
        resume_from=distill_paths(output)["config"],
    )  # fmt: skip
