"""Frozen feature backbones by name (STAND-IN: only DINO ViT-S/16 and ViT-S/8).

This file is a minimal stand-in so that the k-means baseline can run on this branch; the full
registry (DINO B/16, B/8, DINOv2 with and without registers) is built on another branch and
replaces this file at merge. The interface is the same: ``build_backbone(name, weights_file)``
returns a module whose forward gives (B, C, h, w) patch features and which exposes ``embed_dim``
and ``patch_size``.
"""
from utils.checkpoint import build_vit, dino_cache_path, dino_weights

BACKBONES = {"dino_vits16": 16, "dino_vits8": 8}


def build_backbone(name, weights_file=None):
    """A DINO ViT-S in eval mode with its release weights (``weights_file``, hub cache or download)."""
    if name not in BACKBONES:
        raise ValueError(f"--backbone must be one of {sorted(BACKBONES)}, got {name!r}")
    patch_size = BACKBONES[name]
    state = dino_weights(patch_size, weights_file)
    vit = build_vit(state, weights_file or dino_cache_path(patch_size), patch_size)
    return vit.eval()
