"""MoCo v2 + MoCHi pretraining (Kalantidis et al., NeurIPS 2020)."""

from .run.version import __version__  # noqa: F401
