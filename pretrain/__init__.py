"""MoCo v2 + MoCHi pretraining (Kalantidis et al., NeurIPS 2020)."""

__version__ = "0.1.0"
