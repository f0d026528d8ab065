"""Detection and segmentation transfer (PASCAL VOC, COCO) of pretrained ResNet-50 query encoders."""
