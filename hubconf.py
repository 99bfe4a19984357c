"""torch.hub entry points: the released IDDC models for COCO-Stuff-27, and any IDDC checkpoint file.

    model = torch.hub.load("<owner>/iddc", "iddc_vits16_cocostuff27")          # from this project on GitHub
    model = torch.hub.load("path/to/iddc", "iddc_vits8_cocostuff27", source="local")
    model = torch.hub.load("<owner>/iddc", "iddc_checkpoint", path="outputs/train/last_model.pth")
    features, codes, logits = model(images)   # images (B, 3, H, W), ImageNet-normalised; logits (B, 27, H/16, W/16)

The checkpoint is downloaded from the released Google Drive file with gdown, as val_coco27.sh does,
into ``checkpoint_dir`` (default: $CHECKPOINT_DIR, else <torch hub dir>/checkpoints) unless it is
already there, and loaded with the backbone it carries.
"""

import os
from pathlib import Path

dependencies = ["torch", "torchvision", "gdown", "scipy", "yaml"]


def _released_model(name, checkpoint_dir=None, proxy=None, quiet=False):
    import torch

    from modules.checkpoint import load_iddc_model
    from scripts.download_checkpoint import RELEASED_CHECKPOINTS, fetch_checkpoint

    folder = Path(checkpoint_dir or os.environ.get("CHECKPOINT_DIR") or Path(torch.hub.get_dir()) / "checkpoints")
    path = fetch_checkpoint(name, folder / RELEASED_CHECKPOINTS[name].file_name, proxy=proxy, quiet=quiet)
    model, _ = load_iddc_model(path, patch_size=int(name.removeprefix("vits")))
    return model.eval()


def iddc_checkpoint(path):
    """IDDC from any checkpoint file the project reads (a train.py output, with any backbone of
    modules/backbones.py, or a released file), with the backbone it carries; nothing is downloaded.
    A checkpoint holding DINOv3 weights falls under Meta's DINOv3 licence."""
    from modules.checkpoint import load_iddc_model

    model, _ = load_iddc_model(path)
    return model.eval()


def iddc_vits16_cocostuff27(checkpoint_dir=None, proxy=None, quiet=False):
    """IDDC with DINO ViT-S/16 trained on COCO-Stuff-27 (paper: 59.9 Acc / 25.8 mIoU, sliding protocol)."""
    return _released_model("vits16", checkpoint_dir, proxy, quiet)


def iddc_vits8_cocostuff27(checkpoint_dir=None, proxy=None, quiet=False):
    """IDDC with DINO ViT-S/8 trained on COCO-Stuff-27 (paper: 58.3 Acc / 25.5 mIoU, sliding protocol)."""
    return _released_model("vits8", checkpoint_dir, proxy, quiet)
