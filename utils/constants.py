"""Numbers every layer agrees on, defined once."""

# Label value of unlabelled pixels in every dataset's class maps (and in the loss's targets).
IGNORE_INDEX = 255
# ImageNet statistics: the normalisation every backbone (DINO, DINOv2, DINOv3 LVD-1689M) was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
