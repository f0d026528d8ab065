"""The version every command's --version prints, and the one pip installs (pyproject.toml reads it)."""

__version__ = "0.1.0"
