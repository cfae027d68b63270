"""The errors the package reports to people as one line (exit code 2 in CLIs)."""


class DiffusionKerasError(ValueError):
    """Base class: a problem with the user's input, stated in one line."""


class UsageError(DiffusionKerasError):
    """A bad command-line argument or combination of arguments."""


class DataError(DiffusionKerasError):
    """Training data that cannot be used."""


class TrainingError(DiffusionKerasError):
    """A training run that cannot go on."""


class ModelFileError(DiffusionKerasError):
    """A model file that is missing, damaged or not a `DiffusionModel`."""


class Preempted(Exception):
    """Training stopped on SIGTERM after saving its position; `--resume`
    continues it exactly. Not a `DiffusionKerasError`: it is not a mistake,
    and `train.py` exits with status 143 for it."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint
