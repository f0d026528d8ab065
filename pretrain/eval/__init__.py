"""Evaluation of pretrained backbones: loading them, kNN, the linear probe, the training-time monitor."""
