"""Checkpoint formats: the released IDDC files and the project's own.

Released IDDC format (SPEC §2), which the project also writes so the original code can load it::

    {'backbone': {'model.<vit key>': T}, 'head_nonlinear': {'0.weight', ...}, 'classifier': {...}}

Extra top-level keys (``config``, ``epoch``, ``backbone_name``, ...) hold only plain Python values,
so files load with ``torch.load(weights_only=True)``. ``backbone_name`` (one of
``modules.backbones.BACKBONES``) is what the project's files add so that evaluation needs no flag;
the released files have none and their backbone is read off the tensor shapes. Backbone release
files (DINO, DINOv2) are read by ``modules/backbones.py``, which imports this module for its errors
and loaders; that is why the functions here import it where they use it.
"""
from pathlib import Path

import torch

from modules.model import IDDCModel
from utils.errors import EXIT_PROBLEMS, ReportedError
from utils.files import atomic_path

IDDC_PARTS = ("backbone", "head_nonlinear", "classifier")
BACKBONE_PREFIX = "model."


class CheckpointError(ReportedError, ValueError):
    """A checkpoint file is missing, unreadable, holds non-finite weights or does not fit the model asked for."""


class WeightsDownloadError(CheckpointError):
    """The DINO weights could not be downloaded: a problem of the network, not of the input (exit 1)."""

    exit_code = EXIT_PROBLEMS


def load_file(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: cannot read it as a torch checkpoint ({type(err).__name__}: {err})") from err


def detect_format(obj):
    """'iddc' (released or project), 'dino' (plain ViT state_dict) or 'dino-full' (teacher/student)."""
    if isinstance(obj, dict):
        if all(part in obj for part in IDDC_PARTS):
            return "iddc"
        if "patch_embed.proj.weight" in obj:
            return "dino"
        if "teacher" in obj and isinstance(obj["teacher"], dict):
            return "dino-full"
    return "unknown"


def strip_prefix(state_dict, prefix, source):
    stray = [key for key in state_dict if not key.startswith(prefix)]
    if stray:
        raise CheckpointError(f"{source}: backbone keys must start with {prefix!r}; found {stray[:5]}")
    return {key[len(prefix):]: value for key, value in state_dict.items()}


def load_strict(module, state_dict, what, source):
    """load_state_dict(strict=True) with one message that lists every mismatch."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"{source}: the '{what}' weights do not fit the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))
    check_finite_weights(state_dict, what, source)
    module.load_state_dict(state_dict, strict=True)


def check_finite_weights(state_dict, what, source):
    """A NaN or inf weight would make every prediction silently meaningless: name the tensor."""
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = value[~finite]
                raise CheckpointError(
                    f"{source}: the '{what}' tensor {key} {tuple(value.shape)} holds {int(bad.isnan().sum())} NaN and "
                    f"{int(bad.isinf().sum())} infinite value(s); the file is damaged or came from a diverged run")


def load_iddc_model(path, patch_size=None, num_heads=None):
    """Model and the file's extra metadata from a released or project IDDC checkpoint.

    The backbone is the one the file records, or the one its tensor shapes show, and its depth
    and width are read from the tensors, so small test models load as well; nothing is
    downloaded, since the file carries its backbone.
    """
    obj = load_file(path)
    kind = detect_format(obj)
    if kind != "iddc":
        hint = " It looks like a DINO backbone file: it has no trained head." if kind.startswith("dino") else ""
        raise CheckpointError(f"{path}: not an IDDC checkpoint (expected top-level keys {list(IDDC_PARTS)}).{hint}")
    model = model_from_iddc_state(obj, path, patch_size, num_heads)
    return model, {key: value for key, value in obj.items() if key not in IDDC_PARTS}


def model_from_iddc_state(state, source, patch_size=None, num_heads=None, backbone=None):
    """An IDDCModel from the released layout {'backbone', 'head_nonlinear', 'classifier'}, strictly.

    ``patch_size`` and ``backbone`` (a name), when given, are what the caller expects the file
    to hold; a file holding something else is an error that says so.
    """
    from modules.backbones import SPECS, backbone_from_state_dict, infer_backbone_name, to_timm_layout

    vit_state = to_timm_layout(strip_prefix(state["backbone"], BACKBONE_PREFIX, source))
    patch_weight = vit_state.get("patch_embed.proj.weight")
    if patch_size is not None and patch_weight is not None and patch_weight.shape[-1] != patch_size:
        raise CheckpointError(
            f"{source} holds a ViT with patch size {patch_weight.shape[-1]} (patch_embed.proj.weight is "
            f"{'x'.join(map(str, patch_weight.shape))}), but a patch-{patch_size} model was asked for "
            f"(--patch-size {patch_size}); use the matching checkpoint or --patch-size {patch_weight.shape[-1]}"
        )
    name = state.get("backbone_name") or infer_backbone_name(vit_state, source)
    if name not in SPECS:
        raise CheckpointError(f"{source}: records backbone {name!r}, which this version does not know ({', '.join(SPECS)})")
    if backbone is not None and name != backbone:
        raise CheckpointError(f"{source} holds a {name} model, but --backbone {backbone} was asked for")
    vit = backbone_from_state_dict(name, vit_state, source, num_heads)
    classifier_weight = state["classifier"].get("weight")
    if classifier_weight is None:
        raise CheckpointError(f"{source}: the 'classifier' weights have no 'weight' tensor")
    model = IDDCModel(vit, num_classes=classifier_weight.shape[0])
    load_strict(model.head_nonlinear, state["head_nonlinear"], "head_nonlinear", source)
    load_strict(model.classifier, state["classifier"], "classifier", source)
    return model


def iddc_state(model, **extra):
    """The released layout on CPU tensors, plus plain-valued extras (config, epoch, metrics)."""
    from modules.backbones import infer_backbone_name

    backbone = {key: value.detach().cpu() for key, value in model.backbone.state_dict().items()}
    state = {
        "backbone_name": model.backbone_name or infer_backbone_name(strip_prefix(backbone, BACKBONE_PREFIX, "model")),
        "backbone": backbone,
        "head_nonlinear": {key: value.detach().cpu() for key, value in model.head_nonlinear.state_dict().items()},
        "classifier": {key: value.detach().cpu() for key, value in model.classifier.state_dict().items()},
    }
    state.update(extra)
    return state


def save_atomic(obj, path):
    """Write to a temporary file beside ``path`` and rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def new_iddc_model(backbone, backbone_weights=None, num_classes=27, num_heads=None, download=True):
    """A model with a pretrained backbone and a freshly initialised head, for training.

    ``backbone`` is a name of ``modules.backbones.BACKBONES`` or, as ``--patch-size``, 16 or 8.
    """
    from modules.backbones import build_backbone, resolve_backbone_name

    name = resolve_backbone_name(patch_size=backbone) if isinstance(backbone, int) else backbone
    vit = build_backbone(name, backbone_weights, download=download, num_heads=num_heads)
    return IDDCModel(vit, num_classes=num_classes)
