"""Exceptions raised by emrestore, each meant to be read by a microscopist."""


class EmrestoreError(Exception):
    """Base class for every error emrestore raises on purpose."""


class InputError(EmrestoreError, ValueError):
    """An input (array, file, parameter) is unusable: the message says what and why."""


class ConfigError(EmrestoreError, ValueError):
    """A configuration file or parameter set does not match the documented schema."""
