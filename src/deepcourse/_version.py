"""The version of the `deepcourse` distribution: pyproject.toml reads it from here, so it is written once."""
__version__ = "0.1.0"
