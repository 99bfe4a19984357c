"""Checkpoint formats: the released IDDC files, DINO release files and the project's own.

Released IDDC format (SPEC §2), which the project also writes so the original code can load it::

    {'backbone': {'model.<vit key>': T}, 'head_nonlinear': {'0.weight', ...}, 'classifier': {...}}

Extra top-level keys (``config``, ``epoch``, ...) hold only plain Python values, so files load
with ``torch.load(weights_only=True)``.
"""
from pathlib import Path

import torch

from modules.model import IDDCModel
from modules.vit import VisionTransformer, vit_arch_from_state_dict
from utils.errors import EXIT_PROBLEMS, ReportedError
from utils.files import atomic_path

DINO_BASE_URL = "https://dl.fbaipublicfiles.com/dino/"
# The S/8 file is the 300-epoch release the IDDC code uses (not timm's vit_small_patch8_224.dino).
DINO_FILES = {
    16: "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    8: "dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth",
}
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


def dino_state_dict(obj, source):
    """A plain ViT state_dict from a DINO release file (plain or the full teacher checkpoint)."""
    kind = detect_format(obj)
    if kind == "dino":
        return obj
    if kind == "dino-full":
        teacher = {key.removeprefix("module."): value for key, value in obj["teacher"].items()}
        return {key.removeprefix("backbone."): value for key, value in teacher.items() if key.startswith("backbone.")}
    if kind == "iddc":
        return strip_prefix(obj["backbone"], BACKBONE_PREFIX, source)
    raise CheckpointError(f"{source}: not a DINO ViT state_dict (no 'patch_embed.proj.weight' key)")


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


def build_vit(vit_state, source, patch_size=None, num_heads=None):
    """A ViT shaped like the tensors in ``vit_state``, checked against an expected patch size."""
    arch = vit_arch_from_state_dict(vit_state, num_heads=num_heads)
    if patch_size is not None and arch["patch_size"] != patch_size:
        weight = vit_state["patch_embed.proj.weight"]
        raise CheckpointError(
            f"{source} holds a ViT with patch size {arch['patch_size']} (patch_embed.proj.weight is "
            f"{'x'.join(map(str, weight.shape))}), but a patch-{patch_size} model was asked for "
            f"(--patch-size {patch_size}); use the matching checkpoint or --patch-size {arch['patch_size']}"
        )
    vit = VisionTransformer(**arch)
    load_strict(vit, vit_state, "backbone", source)
    return vit


def load_iddc_model(path, patch_size=None, num_heads=None):
    """Model and the file's extra metadata from a released or project IDDC checkpoint.

    The architecture is read from the tensors, so small test models load as well; nothing is
    downloaded, since the file carries its backbone.
    """
    obj = load_file(path)
    kind = detect_format(obj)
    if kind != "iddc":
        hint = " It looks like a DINO backbone file: it has no trained head." if kind.startswith("dino") else ""
        raise CheckpointError(f"{path}: not an IDDC checkpoint (expected top-level keys {list(IDDC_PARTS)}).{hint}")
    model = model_from_iddc_state(obj, path, patch_size, num_heads)
    return model, {key: value for key, value in obj.items() if key not in IDDC_PARTS}


def model_from_iddc_state(state, source, patch_size=None, num_heads=None):
    """An IDDCModel from the released layout {'backbone', 'head_nonlinear', 'classifier'}, strictly."""
    vit = build_vit(strip_prefix(state["backbone"], BACKBONE_PREFIX, source), source, patch_size, num_heads)
    classifier_weight = state["classifier"].get("weight")
    if classifier_weight is None:
        raise CheckpointError(f"{source}: the 'classifier' weights have no 'weight' tensor")
    model = IDDCModel(vit, num_classes=classifier_weight.shape[0])
    load_strict(model.head_nonlinear, state["head_nonlinear"], "head_nonlinear", source)
    load_strict(model.classifier, state["classifier"], "classifier", source)
    return model


def iddc_state(model, **extra):
    """The released layout on CPU tensors, plus plain-valued extras (config, epoch, metrics)."""
    state = {
        "backbone": {key: value.detach().cpu() for key, value in model.backbone.state_dict().items()},
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


def dino_cache_path(patch_size):
    """Where torch.hub.load_state_dict_from_url would keep the file, so existing caches are reused."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(DINO_FILES[patch_size]).name


def dino_weights(patch_size, weights_file=None, download=True, base_url=DINO_BASE_URL):
    """The DINO ViT-S state_dict: from ``weights_file``, the hub cache, or the official URL."""
    if patch_size not in DINO_FILES:
        raise CheckpointError(f"--patch-size must be one of {sorted(DINO_FILES)}, got {patch_size}")
    if weights_file is not None:
        return dino_state_dict(load_file(weights_file), weights_file)
    cached = dino_cache_path(patch_size)
    if not cached.is_file():
        if not download:
            raise CheckpointError(
                f"DINO ViT-S/{patch_size} weights not found at {cached}; download "
                f"{base_url}{DINO_FILES[patch_size]} and put it there, or pass --backbone-weights FILE"
            )
        from utils.download import DownloadError, download_file

        try:
            download_file(base_url + DINO_FILES[patch_size], cached, desc=cached.name)
        except DownloadError as err:
            raise WeightsDownloadError(f"{err} (or pass --backbone-weights FILE with the DINO ViT-S/{patch_size} weights)") from err
    return dino_state_dict(load_file(cached), cached)


def new_iddc_model(patch_size, backbone_weights=None, num_classes=27, num_heads=None, download=True):
    """A model with pretrained DINO weights and a freshly initialised head, for training."""
    state = dino_weights(patch_size, backbone_weights, download=download)
    vit = build_vit(state, backbone_weights or dino_cache_path(patch_size), patch_size, num_heads)
    return IDDCModel(vit, num_classes=num_classes)
