"""IDDC's segmentation model: a frozen ViT backbone, a non-linear projection head and a 1x1 classifier."""

import torch
import torch.nn as nn


class IDDCModel(nn.Module):
    """Frozen backbone + trainable head; attribute names follow the released checkpoints.

    ``backbone.model`` holds the ViT so that ``backbone.state_dict()`` carries the ``model.``
    prefix of the released files, and ``head_nonlinear``/``classifier`` keep the original names.
    The ViT is any backbone of ``modules/backbones.py``: a ``modules.vit.VisionTransformer``
    (DINO, DINOv2) or a ``modules.eva.DinoV3VisionTransformer`` (DINOv3); both map images to
    (B, .embed_dim, H / .patch_size, W / .patch_size) features.
    """

    def __init__(self, vit: nn.Module, num_classes=27):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.model = vit
        for param in vit.parameters():
            param.requires_grad_(False)
        dim = vit.embed_dim  # the head widens with the backbone
        self.head_nonlinear = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, kernel_size=1),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(dim, num_classes, kernel_size=1)
        self.backbone.eval()

    @property
    def vit(self):
        return self.backbone.model

    @property
    def patch_size(self):
        return self.vit.patch_size

    @property
    def backbone_name(self):
        """The registry name (modules/backbones.py); None for a ViT built by hand."""
        return getattr(self.vit, "name", None)

    @property
    def num_classes(self):
        return self.classifier.out_channels

    def train(self, mode=True):
        """The backbone stays in eval mode: it is frozen, as in the original."""
        super().train(mode)
        self.backbone.eval()
        return self

    def extract_features(self, images):
        with torch.no_grad():
            return self.vit(images)  # (B, C, h, w)

    def head(self, features):
        codes_inter = self.head_nonlinear(features)  # (B, C, h, w)
        return codes_inter, self.classifier(codes_inter)  # (B, K, h, w)

    def forward(self, images):
        """Return (backbone features, head output, cluster logits), as the original's forward."""
        features = self.extract_features(images)  # (B, C, h, w)
        codes_inter, logits = self.head(features)
        return features, codes_inter, logits


class LinearProbe(nn.Module):
    """Supervised upper bound on the detached head output; never feeds back into IDDC."""

    def __init__(self, dim=384, num_classes=27):
        super().__init__()
        self.linear_head = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, codes_inter):
        return self.linear_head(codes_inter.detach())  # (B, K, h, w)
