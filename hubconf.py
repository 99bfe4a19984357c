"""torch.hub entry points: the released IDDC models for COCO-Stuff-27, and any IDDC checkpoint file.

    model = torch.hub.load("<owner>/iddc", "iddc_vits16_cocostuff27")          # from this project on GitHub
    model = torch.hub.load("path/to/iddc", "iddc_vits8_cocostuff27", source="local")
    model = torch.hub.load("<owner>/iddc", "iddc_checkpoint", path="outputs/train/last_model.pth")  # any iddc file
    features, codes, logits = model(images)   # images (B, 3, H, W), ImageNet-normalised

logits are (B, K, H/P, W/P) with P the backbone's patch size (16 for iddc_vits16_cocostuff27, 8 for
iddc_vits8_cocostuff27) and K the checkpoint's clusters (27 for the released files). The released
checkpoints are downloaded from their Google Drive files with gdown, as val_coco27.sh does, into
``checkpoint_dir`` (default: $CHECKPOINT_DIR, else <torch hub dir>/checkpoints) unless they are
already there, and loaded with the backbone they carry; iddc_checkpoint loads a file you have.

Errors are the project's one-line ReportedError kinds, raised as exceptions: OutputError when
``checkpoint_dir`` cannot be written (checked before any transfer), DownloadError when Google
Drive does not deliver, MissingDependencyError (with the pip command) when gdown is needed but
missing, CheckpointError when the file is damaged.
"""

import os
from pathlib import Path

# gdown is not listed: torch.hub would refuse even a model already downloaded without it; when a
# download needs it, utils/optional.py says how to install it.
dependencies = ["torch", "torchvision", "scipy", "yaml"]


def _released_model(name, checkpoint_dir=None, proxy=None, quiet=False):
    import torch

    from modules.checkpoint import load_iddc_model
    from scripts.download_checkpoint import RELEASED_CHECKPOINTS, fetch_checkpoint

    if checkpoint_dir:
        folder, option = Path(checkpoint_dir), "checkpoint_dir"
    elif os.environ.get("CHECKPOINT_DIR"):
        folder, option = Path(os.environ["CHECKPOINT_DIR"]), "$CHECKPOINT_DIR"
    else:
        folder, option = Path(torch.hub.get_dir()) / "checkpoints", "the torch hub folder"
    path = fetch_checkpoint(
        name, folder / RELEASED_CHECKPOINTS[name].file_name, proxy=proxy, quiet=quiet, option=option
    )
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
