"""Builders shared by the tests: small random IDDC models saved in the official formats."""

import torch

from modules.checkpoint import iddc_state
from modules.model import IDDCModel
from modules.vit import VisionTransformer


def small_model(patch_size=16, embed_dim=64, depth=2, num_classes=27, seed=0):
    """A randomly initialised IDDC model with a small ViT (64 channels a head, as DINO's)."""
    torch.manual_seed(seed)
    vit = VisionTransformer(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=max(1, embed_dim // 64))
    model = IDDCModel(vit, num_classes=num_classes)
    with torch.no_grad():
        # Larger classifier weights so that random models use several clusters.
        model.classifier.weight.mul_(20)
    return model.eval()


def save_released(model, path, **extra):
    """Save in the released layout (backbone keys prefixed 'model.')."""
    torch.save(iddc_state(model, **extra), path)
    return path


def save_dino(model, path):
    """Save the backbone as a DINO release file (plain ViT state_dict)."""
    torch.save(model.vit.state_dict(), path)
    return path
