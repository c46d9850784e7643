"""User-facing errors. The CLI prints these as one line, without a traceback."""


class AlignloopError(Exception):
    """Base of every error caused by the user's input: config, data, model references.

    `where` ("round 1, stage generate") is set by the loop when a stage raises, so the
    CLI's one-line message says where the run stopped."""

    where: str | None = None


class Paused(AlignloopError):
    """The run stopped on purpose and a rerun resumes it (human labels still to come, with
    `labeling.human.wait: exit`): the stage is recorded as `waiting`, not failed, and the
    command exits with `PAUSED_EXIT` instead of an error's 2."""


PAUSED_EXIT = 3


class RoundEnded(AlignloopError):
    """The round cannot go on (no failure slice, no labeled pair); the loop stops cleanly."""


class HeldoutLeak(AlignloopError, RuntimeError):
    """A held-out evaluation prompt reached generation or training: a bug, never ignored."""


class TrainingDiverged(AlignloopError, ArithmeticError):
    """A training step's loss or gradient is not finite: the step is not applied and the
    policy is not saved (the last checkpoint, if any, stays as it was)."""


def not_found(what: str, name: str) -> FileNotFoundError:
    """"WHAT not found: NAME", saying where a relative NAME was looked for (the working
    directory, not the config file's folder: a config names paths as the shell does)."""
    from pathlib import Path

    where = ("" if Path(name).expanduser().is_absolute()
             else f" (relative paths are read from the working directory, {Path.cwd()})")
    return FileNotFoundError(f"{what} not found: {name}{where}")
