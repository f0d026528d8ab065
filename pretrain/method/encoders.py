"""Backbones: any torchvision ResNet by name, optionally with a small-image stem, and MoCo's heads."""

from __future__ import annotations

import torch.nn as nn
import torchvision

from .archs import ARCHS


def resnet(arch: str, num_classes: int, small_stem: bool = False) -> nn.Module:
    """A randomly initialised torchvision ResNet with a ``num_classes``-way ``fc``.

    ``small_stem`` swaps the 7x7 stride-2 conv and max-pool for a 3x3 stride-1 conv (the usual
    CIFAR/STL adaptation), so 28-64 px images keep enough spatial resolution. ``arch`` must be one of
    ``ARCHS`` (ValueError otherwise).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if small_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return net


def encoder(arch: str, dim: int, mlp: bool, small_stem: bool = False) -> nn.Module:
    """ResNet whose ``fc`` is MoCo v2's MLP head (width -> width -> ReLU -> dim), or linear (v1)."""
    net = resnet(arch, dim, small_stem)
    if mlp:
        width = net.fc.weight.shape[1]
        net.fc = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), net.fc)
    return net
