"""The backbones a run may name: torchvision's ResNet family (ResNet, ResNeXt, Wide ResNet).

Written out rather than asked of torchvision (``torchvision.models.list_models``), whose import takes
about a second: settings are checked in commands that build no network. A test holds this list equal
to the one torchvision registers.
"""

ARCHS = (
    "resnet101", "resnet152", "resnet18", "resnet34", "resnet50",
    "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d",
    "wide_resnet101_2", "wide_resnet50_2",
)


def family(names) -> list[str]:
    """The members of the ResNet family among ``names`` (torchvision's model names), sorted."""
    return sorted(n for n in names if n.startswith(("resnet", "wide_resnet", "resnext")))
