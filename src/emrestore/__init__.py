"""emrestore: simulate, restore and quantify low-dose electron microscopy images."""

__version__ = "0.1.0"

from .errors import ConfigError, EmrestoreError, InputError  # noqa: E402

__all__ = ["ConfigError", "EmrestoreError", "InputError", "__version__"]
