"""Errors that mean "the user must change something"; their message says what.

`main.py` prints these as one line without a traceback; any other exception
is a bug in detector and keeps its traceback.
"""


class ConfigError(ValueError):
  """A config value, flag, path or dataset that cannot work as given."""


class TrainingDivergedError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


class CheckpointError(OSError):
  """A checkpoint could not be written (disk full, file too large, no
  permission); the message names the directory, the step, the OS error and
  the step a rerun resumes from."""
