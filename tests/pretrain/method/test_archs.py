"""The architecture names settings are checked against are the ResNet family torchvision registers."""

import torchvision

from pretrain.method.archs import ARCHS, family


def test_the_written_list_is_torchvisions_resnet_family():
    assert list(ARCHS) == family(torchvision.models.list_models(module=torchvision.models))
