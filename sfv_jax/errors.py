"""Errors that mean "the user's input is wrong": the CLI prints them as one line and exits 2."""


class SfvError(Exception):
    """Base class of user-facing errors; the message says what is wrong and how to fix it."""


class CheckpointError(SfvError):
    """A checkpoint or model folder is missing, corrupt, or does not match the model."""


class ConfigError(SfvError):
    """A config file or a config override is wrong."""
