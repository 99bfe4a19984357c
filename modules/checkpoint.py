"""Checkpoint formats: the released IDDC files and the project's own.

Released IDDC format (docs/method.md#checkpoint-formats), which the project also writes so the
original code can load it::

    {'backbone': {'model.<vit key>': T}, 'head_nonlinear': {'0.weight', ...}, 'classifier': {...}}

Extra top-level keys (``config``, ``epoch``, ``backbone_name``, ...) hold only plain Python values,
so files load with ``torch.load(weights_only=True)``. ``backbone_name`` (one of
``modules.backbones.BACKBONES``) is what the project's files add so that evaluation needs no flag;
the released files have none and their backbone is read off the tensor shapes. ``backbone_architecture``
(its depth and width) is what the project's files record and are checked against; the released
files record none and must hold their backbone's whole release (modules/backbones.py). Backbone release
files (DINO, DINOv2, DINOv3) are read by ``modules/backbones.py``; both use ``modules/weights.py``.
The ViT under ``backbone`` is a timm ``VisionTransformer`` (DINO, DINOv2) or, for DINOv3, an
``Eva`` (``modules/eva.py``, with its RoPE ``rope.periods``); a file holding DINOv3 weights falls
under Meta's DINOv3 licence.
"""

from modules.backbones import (
    ARCHITECTURE_KEY,
    SPECS,
    architecture_record,
    backbone_from_state_dict,
    build_backbone,
    infer_backbone_name,
    resolve_backbone_name,
    to_timm_layout,
)
from modules.model import IDDCModel
from modules.weights import CheckpointError, load_file, load_strict, strip_prefix

IDDC_PARTS = ("backbone", "head_nonlinear", "classifier")
BACKBONE_PREFIX = "model."


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


def add_expect_patch_size(parser):
    """``--expect-patch-size`` of the commands that load an IDDC checkpoint (eval.py, predict.py):
    the file says its backbone, so the option only checks it (the ``patch_size`` of
    :func:`load_iddc_model`). Its old name ``--patch-size`` still works, with a note: in train.py
    that name chooses the backbone (docs/troubleshooting.md#names-that-changed)."""
    parser.add_argument(
        "--expect-patch-size",
        type=int,
        choices=(16, 8, 14),
        default=None,
        help="refuse a checkpoint whose ViT has another patch size (default: none, take the checkpoint's)",
    )
    parser.add_renamed_option("--patch-size", "--expect-patch-size", "it only checks the checkpoint")


def load_iddc_model(path, patch_size=None, num_heads=None):
    """Model and the file's extra metadata from a released or project IDDC checkpoint.

    The backbone is the one the file records, or the one its tensor shapes show; its depth and
    width are those the file records (the project's files), else its release's; nothing is
    downloaded, since the file carries its backbone.
    """
    obj = load_file(path)
    kind = detect_format(obj)
    if kind != "iddc":
        hint = (
            " It looks like a DINO backbone file (a release of DINO, DINOv2 or DINOv3): it has no trained head."
            if kind.startswith("dino")
            else ""
        )
        raise CheckpointError(f"{path}: not an IDDC checkpoint (expected top-level keys {list(IDDC_PARTS)}).{hint}")
    model = model_from_iddc_state(obj, path, patch_size, num_heads)
    return model, {key: value for key, value in obj.items() if key not in IDDC_PARTS}


def model_from_iddc_state(state, source, patch_size=None, num_heads=None, backbone=None):
    """An IDDCModel from the released layout {'backbone', 'head_nonlinear', 'classifier'}, strictly.
    Its number of clusters K is the classifier's width (any K: ``train.py --num-clusters``).

    ``patch_size`` and ``backbone`` (a name), when given, are what the caller expects the file
    to hold; a file holding something else is an error that says so.
    """
    vit_state = to_timm_layout(strip_prefix(state["backbone"], BACKBONE_PREFIX, source), source)
    patch_weight = vit_state.get("patch_embed.proj.weight")
    if patch_size is not None and patch_weight is not None and patch_weight.shape[-1] != patch_size:
        raise CheckpointError(
            f"{source} holds a ViT with patch size {patch_weight.shape[-1]} (patch_embed.proj.weight is "
            f"{'x'.join(map(str, patch_weight.shape))}), but a patch-{patch_size} model was asked for "
            f"(--expect-patch-size {patch_size}); use the matching checkpoint or --expect-patch-size "
            f"{patch_weight.shape[-1]}"
        )
    name = state.get("backbone_name") or infer_backbone_name(vit_state, source)
    if name not in SPECS:
        raise CheckpointError(
            f"{source}: records backbone {name!r}, which this version does not know ({', '.join(SPECS)})"
        )
    if backbone is not None and name != backbone:
        raise CheckpointError(f"{source} holds a {name} model, but --backbone {backbone} was asked for")
    vit = backbone_from_state_dict(name, vit_state, source, num_heads, recorded=state.get(ARCHITECTURE_KEY))
    classifier_weight = state["classifier"].get("weight")
    if classifier_weight is None:
        raise CheckpointError(f"{source}: the 'classifier' weights have no 'weight' tensor")
    model = IDDCModel(vit, num_classes=classifier_weight.shape[0])
    load_strict(model.head_nonlinear, state["head_nonlinear"], "head_nonlinear", source)
    load_strict(model.classifier, state["classifier"], "classifier", source)
    return model


def iddc_state(model, **extra):
    """The released layout on CPU tensors, plus plain-valued extras (config, epoch, metrics)."""
    backbone = {key: value.detach().cpu() for key, value in model.backbone.state_dict().items()}
    state = {
        "backbone_name": model.backbone_name or infer_backbone_name(strip_prefix(backbone, BACKBONE_PREFIX, "model")),
        ARCHITECTURE_KEY: architecture_record(model.vit),
        "backbone": backbone,
        "head_nonlinear": {key: value.detach().cpu() for key, value in model.head_nonlinear.state_dict().items()},
        "classifier": {key: value.detach().cpu() for key, value in model.classifier.state_dict().items()},
    }
    state.update(extra)
    return state


def new_iddc_model(backbone, backbone_weights=None, num_classes=27, num_heads=None, download=True):
    """A model with a pretrained backbone and a freshly initialised head, for training.

    ``backbone`` is a name of ``modules.backbones.BACKBONES`` or, as ``--patch-size``, 16 or 8.
    """
    name = resolve_backbone_name(patch_size=backbone) if isinstance(backbone, int) else backbone
    vit = build_backbone(name, backbone_weights, download=download, num_heads=num_heads)
    return IDDCModel(vit, num_classes=num_classes)
