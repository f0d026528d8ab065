"""torchvision detection models on a pretrained ResNet-50, shaped like MoCo's detectron2 recipes.

- ``c4``: Faster / Mask R-CNN R50-C4: conv1..res4 (stride 16) feed the RPN; each RoI is pooled to
  14 x 14 and run through res5 followed by an extra BatchNorm (detectron2's
  ``Res5ROIHeadsExtraNorm``, no ReLU after it); the box head averages the 7 x 7 output, the mask
  head upsamples it (res5 is shared by both, as in detectron2's Res5ROIHeads).
- ``fpn``: torchvision's R50-FPN Faster / Mask R-CNN with trainable BatchNorm (not the frozen BN
  torchvision uses for ImageNet weights) and every stage trainable (FREEZE_AT 0).

Under DDP, ``sync_bn`` turns every BatchNorm into SyncBatchNorm (the recipes' SyncBN).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torchvision
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

KINDS = ("c4", "fpn")


def resnet50(state: dict[str, torch.Tensor] | None) -> torchvision.models.ResNet:
    """A torchvision ResNet-50 with trainable BN, holding ``state`` (backbone keys, no ``fc``) if given."""
    net = torchvision.models.resnet50()
    if state is not None:
        missing, unexpected = net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")},
                                                  strict=False)
        if [k for k in missing if not k.startswith("fc.")] or unexpected:
            raise ValueError(f"backbone state does not fit ResNet-50: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net


class C4Backbone(nn.Module):
    """conv1 .. res4 of a ResNet: one stride-16 feature map of 1024 channels."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        self.out_channels = 1024

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return OrderedDict([("0", self.body(x))])


class Res5ExtraNorm(nn.Module):
    """res5 then one more BatchNorm over its 2048 channels: [R, 1024, 14, 14] -> [R, 2048, 7, 7]."""

    def __init__(self, net: torchvision.models.ResNet):
        super().__init__()
        self.res5 = net.layer4
        self.norm = nn.BatchNorm2d(2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.res5(x))


class BoxHead(nn.Module):
    """Shared res5 + extra norm, averaged to one 2048-d vector per RoI."""

    def __init__(self, res5: Res5ExtraNorm):
        super().__init__()
        self.res5 = res5
        self.out_channels = 2048

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x).mean(dim=(2, 3))


class MaskHead(nn.Module):
    """The same res5 + extra norm for the mask branch (its predictor upsamples 7 x 7 to 14 x 14)."""

    def __init__(self, res5: Res5ExtraNorm):
        super().__init__()
        self.res5 = res5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res5(x)


def build(kind: str, num_classes: int, state: dict[str, torch.Tensor] | None, mask: bool = False,
          min_size: int | tuple[int, ...] = 800, max_size: int = 1333, sync_bn: bool = False,
          rois_per_image: int = 512, test_proposals: int = 1000) -> nn.Module:
    """Faster (``mask=False``) or Mask R-CNN for ``num_classes`` object classes (+ background).

    ``rois_per_image`` (detectron2's ROI_HEADS.BATCH_SIZE_PER_IMAGE, 512) and ``test_proposals``
    (RPN.POST_NMS_TOPK_TEST, 1000) follow the recipes; CPU-sized runs lower them, since the C4
    head runs res5 on every RoI.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    net = resnet50(state)
    common = dict(num_classes=None, min_size=min_size, max_size=max_size,
                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                  box_batch_size_per_image=rois_per_image, rpn_post_nms_top_n_test=test_proposals)
    if kind == "fpn":
        backbone = _resnet_fpn_extractor(net, trainable_layers=5)
        head = MaskRCNN if mask else FasterRCNN
        model = head(backbone, **{**common, "num_classes": num_classes + 1})
    else:
        res5 = Res5ExtraNorm(net)
        anchors = AnchorGenerator(sizes=((32, 64, 128, 256, 512),), aspect_ratios=((0.5, 1.0, 2.0),))
        pool = MultiScaleRoIAlign(featmap_names=["0"], output_size=14, sampling_ratio=0)
        kw = dict(rpn_anchor_generator=anchors, rpn_head=RPNHead(1024, anchors.num_anchors_per_location()[0]),
                  box_roi_pool=pool, box_head=BoxHead(res5), box_predictor=FastRCNNPredictor(2048, num_classes + 1),
                  rpn_pre_nms_top_n_test=6000)
        if mask:
            model = MaskRCNN(C4Backbone(net), **common, **kw, mask_roi_pool=pool, mask_head=MaskHead(res5),
                             mask_predictor=MaskRCNNPredictor(2048, 256, num_classes + 1))
        else:
            model = FasterRCNN(C4Backbone(net), **common, **kw)
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model
