"""The frozen backbones IDDC runs on: DINO ViT-S/16, S/8, B/16, B/8, DINOv2 ViT-S/14, B/14 (with
and without registers) and DINOv3 ViT-S/16, S+/16, B/16, L/16, each built with timm and loaded
from its official release file.

    from modules.backbones import BACKBONES, build_backbone
    vit = build_backbone("dinov2_vits14")                # hub cache, else downloaded there
    vit = build_backbone("dino_vitb8", "my_copy.pth")    # a release file given by hand
    features = vit(images)                               # (B, vit.embed_dim, H / vit.patch_size, W / vit.patch_size)

Release files keep their projects' key layouts (DINO: timm's names already; DINOv2: ``pos_embed``
with the class token's row, ``register_tokens``, ``mask_token``, LayerScale ``ls1.gamma``;
DINOv3: ``storage_tokens``, ``rope_embed.periods``, the masked k bias of ``qkv``, SwiGLU's
``w1``/``w2``/``w3``) and are converted to timm's layout on loading. DINO and DINOv2 are timm
``VisionTransformer`` models (``modules/vit.py``), DINOv3 an ``Eva`` (``modules/eva.py``). The name
fixes the family, patch size, registers, MLP and positional rule, and the release's depth and width:
a file must hold that whole ViT (a missing or extra block is an error that lists it; a ViT-B file
given for a ViT-S name, or the reverse, is an error that names the right one). A file may instead
record its own depth and width under ``ARCHITECTURE_KEY`` (the project's own files do, and the
reduced models of the tests and benchmarks), and is then checked against that record; the shapes
of the tensors alone never decide the depth.

Meta hands the DINOv3 files out after a licence form, so they are never downloaded: they are
read from ``--backbone-weights FILE`` or from the torch hub cache under their release names.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.eva import DinoV3VisionTransformer
from modules.vit import DINO_INTERPOLATION, PositionalInterpolation, VisionTransformer
from modules.weights import CheckpointError, WeightsDownloadError, load_file, load_strict
from utils.download import DownloadError, download_file

DINO_BASE_URL = "https://dl.fbaipublicfiles.com/dino/"
DINOV2_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2/"
# The register models of DINOv2's hub (dinov2/hub/backbones.py) resize the positional embedding
# to the grid with antialias and no offset; the models without registers use DINO's rule.
DINOV2_REG_INTERPOLATION = PositionalInterpolation(offset=0.0, antialias=True)
# Where Meta hands out the DINOv3 download addresses, after its licence form.
DINOV3_DOWNLOADS_PAGE = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
# The input statistics of DINOv3's SAT-493M satellite weights (dinov3/hub and timm's configs), not ImageNet's.
DINOV3_SAT_MEAN = (0.430, 0.411, 0.296)
DINOV3_SAT_STD = (0.213, 0.156, 0.143)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    title: str
    family: str  # "dino", "dinov2" or "dinov3"
    patch_size: int
    embed_dim: int
    num_heads: int
    release_file: str  # path below the family's base URL (DINOv3: the file name Meta gives it)
    num_registers: int = 0  # DINOv3: its storage tokens
    interpolation: PositionalInterpolation = DINO_INTERPOLATION  # of the learned table; DINOv3 has none
    swiglu: bool = False  # DINOv3 ViT-S+: a SwiGLU MLP
    depth: int = 12  # transformer blocks of the release

    @property
    def layer_scale(self):
        return self.family in ("dinov2", "dinov3")

    @property
    def rope(self):
        """RoPE positions (DINOv3) instead of a learned positional table."""
        return self.family == "dinov3"

    @property
    def base_url(self):
        """None for DINOv3: Meta gives its download addresses only after a licence form."""
        return {"dino": DINO_BASE_URL, "dinov2": DINOV2_BASE_URL}.get(self.family)


_SPECS = (
    # The S/8 file is the 300-epoch release the IDDC code uses (not timm's vit_small_patch8_224.dino).
    BackboneSpec(
        "dino_vits16", "DINO ViT-S/16", "dino", 16, 384, 6, "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
    ),
    BackboneSpec(
        "dino_vits8",
        "DINO ViT-S/8",
        "dino",
        8,
        384,
        6,
        "dino_deitsmall8_300ep_pretrain/dino_deitsmall8_300ep_pretrain.pth",
    ),
    BackboneSpec(
        "dino_vitb16", "DINO ViT-B/16", "dino", 16, 768, 12, "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
    ),
    BackboneSpec("dino_vitb8", "DINO ViT-B/8", "dino", 8, 768, 12, "dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    BackboneSpec("dinov2_vits14", "DINOv2 ViT-S/14", "dinov2", 14, 384, 6, "dinov2_vits14/dinov2_vits14_pretrain.pth"),
    BackboneSpec("dinov2_vitb14", "DINOv2 ViT-B/14", "dinov2", 14, 768, 12, "dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
    BackboneSpec(
        "dinov2_vits14_reg",
        "DINOv2 ViT-S/14 with registers",
        "dinov2",
        14,
        384,
        6,
        "dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
        num_registers=4,
        interpolation=DINOV2_REG_INTERPOLATION,
    ),
    BackboneSpec(
        "dinov2_vitb14_reg",
        "DINOv2 ViT-B/14 with registers",
        "dinov2",
        14,
        768,
        12,
        "dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
        num_registers=4,
        interpolation=DINOV2_REG_INTERPOLATION,
    ),
    # DINOv3 LVD-1689M web-image weights; file names and sizes from Meta's dinov3/hub/backbones.py.
    BackboneSpec(
        "dinov3_vits16", "DINOv3 ViT-S/16", "dinov3", 16, 384, 6, "dinov3_vits16_pretrain_lvd1689m-08c60483.pth", 4
    ),
    BackboneSpec(
        "dinov3_vits16plus",
        "DINOv3 ViT-S+/16",
        "dinov3",
        16,
        384,
        6,
        "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
        4,
        swiglu=True,
    ),
    BackboneSpec(
        "dinov3_vitb16", "DINOv3 ViT-B/16", "dinov3", 16, 768, 12, "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth", 4
    ),
    BackboneSpec(
        "dinov3_vitl16",
        "DINOv3 ViT-L/16",
        "dinov3",
        16,
        1024,
        16,
        "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
        4,
        depth=24,
    ),
)
SPECS = {spec.name: spec for spec in _SPECS}
BACKBONES = tuple(SPECS)
# --patch-size, the short form of the two backbones of the original code.
PATCH_SIZE_SHORT_FORMS = {16: "dino_vits16", 8: "dino_vits8"}


# {"depth": int, "embed_dim": int}: top-level in the project's IDDC files, or beside the tensors of a
# release-layout state_dict of a reduced model (see :func:`with_architecture_record`).
ARCHITECTURE_KEY = "backbone_architecture"


def architecture_record(vit):
    """What a file records of ``vit``: its depth and width."""
    return {"depth": len(vit.blocks), "embed_dim": int(vit.embed_dim)}


def with_architecture_record(vit):
    """``vit``'s state_dict (a release file of DINO's layout), with its depth and width recorded
    beside the tensors: the route of a reduced model (fewer blocks, narrower) into every loader that takes a
    release file, explicitly, since a release file is otherwise held to its release's size."""
    return {**vit.state_dict(), ARCHITECTURE_KEY: architecture_record(vit)}


def backbone_spec(name):
    if name not in SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return SPECS[name]


def resolve_backbone_name(backbone=None, patch_size=None):
    """The backbone named by --backbone and/or its short form --patch-size (default dino_vits16).

    Given both, the patch size only checks the backbone, so a config's ``backbone`` and a
    ``--patch-size`` on the command line cannot silently disagree.
    """
    if backbone is None:
        if patch_size is None:
            return PATCH_SIZE_SHORT_FORMS[16]
        if patch_size not in PATCH_SIZE_SHORT_FORMS:
            raise ValueError(
                f"--patch-size {patch_size} has no short form; use --backbone NAME ({', '.join(BACKBONES)})"
            )
        return PATCH_SIZE_SHORT_FORMS[patch_size]
    spec = backbone_spec(backbone)
    if patch_size is not None and patch_size != spec.patch_size:
        raise ValueError(
            f"--patch-size {patch_size} contradicts --backbone {backbone} (patch {spec.patch_size}); give one of them"
        )
    return backbone


def release_url(name, base_url=None):
    spec = backbone_spec(name)
    if spec.base_url is None:
        raise ValueError(f"{spec.title} has no public download address; Meta hands it out at {DINOV3_DOWNLOADS_PAGE}")
    return (base_url or spec.base_url) + spec.release_file


def release_cache_path(name):
    """Where torch.hub.load_state_dict_from_url would keep the release file, so existing caches are reused."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(backbone_spec(name).release_file).name


def unwrap_state_dict(obj, source):
    """The ViT state_dict in a release file: plain (every release), DINO's full training checkpoint
    (the teacher's ``backbone.`` keys) or the backbone of an IDDC checkpoint (``model.`` keys)."""
    if isinstance(obj, dict):
        if "patch_embed.proj.weight" in obj:
            return obj
        # A record of the backbone's size (the project's IDDC files, a reduced model's) goes with it.
        record = {ARCHITECTURE_KEY: obj[ARCHITECTURE_KEY]} if ARCHITECTURE_KEY in obj else {}
        if isinstance(obj.get("teacher"), dict):
            teacher = {key.removeprefix("module."): value for key, value in obj["teacher"].items()}
            return {
                key.removeprefix("backbone."): value for key, value in teacher.items() if key.startswith("backbone.")
            } | record
        if isinstance(obj.get("backbone"), dict) and "model.patch_embed.proj.weight" in obj["backbone"]:
            return {key.removeprefix("model."): value for key, value in obj["backbone"].items()} | record
    raise CheckpointError(f"{source}: not a ViT state_dict (no 'patch_embed.proj.weight' key)")


def release_state_dict(name, weights_file=None, *, download=True, base_url=None):
    """(state_dict, source) of a backbone's release: ``weights_file``, the hub cache, or the official URL.

    DINOv3 files are never downloaded (Meta hands the address out after a licence form): a file
    missing from the hub cache is an error that names it, the folder and where to request it.
    """
    spec = backbone_spec(name)
    if weights_file is not None:
        return unwrap_state_dict(load_file(weights_file), weights_file), Path(weights_file)
    cached = release_cache_path(name)
    if not cached.is_file() and spec.base_url is None:
        raise CheckpointError(
            f"{spec.title} weights not found at {cached}; download {spec.release_file} (Meta gives the address "
            f"after its licence form at {DINOV3_DOWNLOADS_PAGE}) and put it there, or pass --backbone-weights FILE"
        )
    if not cached.is_file():
        url = release_url(name, base_url)
        if not download:
            raise CheckpointError(
                f"{spec.title} weights not found at {cached}; download {url} and put it there, "
                "or pass --backbone-weights FILE"
            )
        try:
            download_file(url, cached, desc=cached.name)
        except DownloadError as err:
            raise WeightsDownloadError(
                f"{err} (or pass --backbone-weights FILE with the {spec.title} weights)"
            ) from err
    return unwrap_state_dict(load_file(cached), cached), cached


# Meta's DINOv3 block names -> timm's Eva names (as timm.models.eva.checkpoint_filter_fn renames them).
_DINOV3_RENAMES = (
    ("ls1.gamma", "gamma_1"),
    ("ls2.gamma", "gamma_2"),
    ("mlp.w1.", "mlp.fc1_g."),
    ("mlp.w2.", "mlp.fc1_x."),
    ("mlp.w3.", "mlp.fc2."),
)


def to_timm_layout(state, source="weights"):
    """A release state_dict in timm's names; a state already in timm's layout is returned as is.

    DINO's names are timm's. DINOv2's ``mask_token`` (only used to mask patches in training) is
    dropped; with registers, ``register_tokens`` becomes ``reg_token`` and the positional
    embedding's class row is folded into ``cls_token`` (timm's register models keep no class row;
    DINOv2 adds that row to the class token and gives the registers none, so the sum is the same).
    DINOv3 files (``storage_tokens``) go through :func:`dinov3_to_timm_layout`.
    """
    if "storage_tokens" in state:
        return dinov3_to_timm_layout(state, source)
    state = dict(state)
    state.pop("mask_token", None)
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
        state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]  # (1, 1, C)
        state["pos_embed"] = state["pos_embed"][:, 1:]  # (1, N, C)
    return state


def dinov3_to_timm_layout(state, source="weights"):
    """Meta's DINOv3 layout in the names of timm's ``vit_*_patch16_dinov3_qkvb`` (modules/eva.py).

    The renaming is timm's ``checkpoint_filter_fn`` (tests/test_dinov3.py checks it against it):
    ``storage_tokens`` -> ``reg_token``, ``ls1/ls2.gamma`` -> ``gamma_1/gamma_2``, SwiGLU's
    ``w1/w2/w3`` -> ``fc1_g/fc1_x/fc2``; ``mask_token`` (training only) is dropped. Two things go
    beyond it, so that the features are those of Meta's model on the file: the qkv bias is taken
    as Meta's ``LinearKMaskedBias`` applies it, multiplied by the file's ``bias_mask`` (its k third
    must then be zero, as timm's model has no k bias), and ``rope_embed.periods`` is kept as
    ``rope.periods`` (the files hold them rounded to bfloat16, and Meta's model uses those).
    """
    if any(key.startswith("local_cls_norm.") for key in state):
        raise CheckpointError(
            f"{source} holds DINOv3's SAT-493M satellite ViT-L/16 weights (it has local_cls_norm), which take other "
            f"input statistics (mean {DINOV3_SAT_MEAN}, std {DINOV3_SAT_STD}) than the ImageNet normalisation IDDC "
            f"uses; use the LVD-1689M file {SPECS['dinov3_vitl16'].release_file} (--backbone dinov3_vitl16)"
        )
    converted = {}
    for key, value in state.items():
        if key == "mask_token" or key.endswith(".attn.qkv.bias_mask"):
            continue
        if key == "storage_tokens":
            converted["reg_token"] = value
        elif key == "rope_embed.periods":
            converted["rope.periods"] = value.float()
        elif key.endswith(".attn.qkv.bias"):
            prefix = key.removesuffix("qkv.bias")
            mask = state.get(key + "_mask")
            bias = value if mask is None else value * mask.to(value.dtype)  # (3C,), what Meta's forward adds
            q_bias, k_bias, v_bias = bias.chunk(3)
            if bool(k_bias.any()):
                raise CheckpointError(
                    f"{source}: {key} has a nonzero k bias after its bias_mask; DINOv3 masks it to zero, and "
                    f"timm's DINOv3 model has no k bias"
                )
            converted[prefix + "q_bias"] = q_bias
            converted[prefix + "v_bias"] = v_bias
        else:
            for old, new in _DINOV3_RENAMES:
                key = key.replace(old, new)
            converted[key] = value
    return converted


@dataclass(frozen=True)
class Architecture:
    patch_size: int
    embed_dim: int
    depth: int
    mlp_ratio: float  # hidden width / embed_dim, as timm counts it (SwiGLU: each input projection)
    num_registers: int  # DINOv3: storage tokens
    layer_scale: bool
    img_size: int  # the learned positional table's training size; 0 with RoPE
    rope: bool = False
    swiglu: bool = False

    def describe(self):
        if self.rope:
            return (
                f"patch {self.patch_size}, {self.num_registers} storage tokens, RoPE, "
                f"{'SwiGLU' if self.swiglu else 'GELU'} MLP"
            )
        return f"patch {self.patch_size}, {self.num_registers} registers, {'' if self.layer_scale else 'no '}LayerScale"


def architecture(state, source):
    """The architecture written in a timm-layout state_dict's tensor shapes: a ViT with a learned
    positional table (DINO, DINOv2) or, with no table and timm's Eva names, DINOv3's RoPE ViT."""
    rope = "pos_embed" not in state and ("rope.periods" in state or "blocks.0.gamma_1" in state)
    swiglu = "blocks.0.mlp.fc1_g.weight" in state
    try:
        embed_dim, _, patch_size, _ = state["patch_embed.proj.weight"].shape
        pos_rows = 0 if rope else state["pos_embed"].shape[1]
        mlp_hidden = state["blocks.0.mlp.fc1_g.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"{source}: not a ViT state_dict: key {err} is missing") from err
    num_registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    grid = 0 if rope else math.isqrt(pos_rows - (0 if num_registers else 1))
    return Architecture(
        patch_size=int(patch_size),
        embed_dim=int(embed_dim),
        depth=len({key.split(".")[1] for key in state if key.startswith("blocks.")}),
        mlp_ratio=mlp_hidden / embed_dim,
        num_registers=int(num_registers),
        layer_scale="blocks.0.ls1.gamma" in state or "blocks.0.gamma_1" in state,
        img_size=grid * int(patch_size),
        rope=rope,
        swiglu=swiglu,
    )


def _candidates(arch):
    """Registered backbones whose family, patch, registers and MLP fit ``arch`` (any width)."""
    return [
        spec
        for spec in _SPECS
        if spec.rope == arch.rope
        and spec.patch_size == arch.patch_size
        and spec.num_registers == arch.num_registers
        and spec.layer_scale == arch.layer_scale
        and spec.swiglu == arch.swiglu
    ]


def infer_backbone_name(state, source="weights"):
    """The backbone a timm-layout state_dict belongs to, from its shapes alone (the released IDDC
    files carry no name). A width no release has (a reduced test model) gets the first (smallest)
    name of its family."""
    arch = architecture(state, source)
    candidates = _candidates(arch)
    if not candidates:
        raise CheckpointError(
            f"{source}: a ViT with {arch.describe()} matches none of the backbones {', '.join(BACKBONES)}"
        )
    same_width = [spec for spec in candidates if spec.embed_dim == arch.embed_dim]
    return (same_width or candidates)[0].name


def backbone_from_state_dict(name, state, source="weights", num_heads=None, recorded=None):
    """Backbone ``name`` with the weights of ``state`` (release or timm layout), loaded strictly,
    frozen and in eval mode; ``num_heads`` defaults to the release's (64 channels a head).

    The ViT must be the release's whole depth and width, or those ``recorded`` (the file's
    ``ARCHITECTURE_KEY`` record, which ``state`` may also hold beside its tensors).
    """
    spec = backbone_spec(name)
    state = dict(state)
    recorded = state.pop(ARCHITECTURE_KEY, None) or recorded
    state = to_timm_layout(state, source)
    arch = architecture(state, source)
    if spec not in _candidates(arch):
        found = infer_backbone_name(state, source)
        raise CheckpointError(
            f"{source} holds a {SPECS[found].title}-like ViT ({arch.describe()}), not a {spec.title}; "
            f"use --backbone {found} or the {spec.title} file"
        )
    other_width = [other for other in _candidates(arch) if other.embed_dim == arch.embed_dim != spec.embed_dim]
    if other_width:
        raise CheckpointError(
            f"{source} holds a {other_width[0].title} (width {arch.embed_dim}), not a {spec.title} "
            f"(width {spec.embed_dim}); use --backbone {other_width[0].name}"
        )
    check_whole(spec, state, arch, recorded, source)
    heads = num_heads or (spec.num_heads if arch.embed_dim == spec.embed_dim else max(1, arch.embed_dim // 64))
    if arch.rope:
        vit = DinoV3VisionTransformer(
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=heads,
            mlp_ratio=arch.mlp_ratio,
            swiglu=arch.swiglu,
            num_storage_tokens=arch.num_registers,
            random_init=False,
        )
    else:
        vit = VisionTransformer(
            patch_size=arch.patch_size,
            embed_dim=arch.embed_dim,
            depth=arch.depth,
            num_heads=heads,
            mlp_ratio=arch.mlp_ratio,
            img_size=arch.img_size,
            layer_scale=arch.layer_scale,
            num_registers=arch.num_registers,
            interpolation=spec.interpolation,
            random_init=False,
        )
    load_strict(vit, state, "backbone", source)
    vit.name = name
    vit.requires_grad_(False)
    return vit.eval()


def check_whole(spec, state, arch, recorded, source):
    """The ViT in ``state`` has every block, and only those, of the release ``spec`` or of the
    architecture the file ``recorded``; its width is theirs too."""
    if recorded is not None:
        try:
            depth, width = int(recorded["depth"]), int(recorded["embed_dim"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{source}: its {ARCHITECTURE_KEY} record {recorded!r} is not {{'depth': N, 'embed_dim': C}}"
            ) from err
        what = f"the {depth}-block, {width}-wide {spec.title} it records"
    else:
        depth, width, what = spec.depth, spec.embed_dim, f"the {spec.title} release"
    if arch.embed_dim != width:
        raise CheckpointError(
            f"{source}: holds a ViT {arch.embed_dim} wide, not {what} ({width} wide); use the file of that backbone"
        )
    present = {int(key.split(".")[1]) for key in state if key.startswith("blocks.")}
    missing = [f"blocks.{index}" for index in range(depth) if index not in present]
    extra = [f"blocks.{index}" for index in sorted(present) if index >= depth]
    if missing or extra:
        found = "; ".join(
            f"{title} {', '.join(blocks)}" for title, blocks in (("missing", missing), ("extra", extra)) if blocks
        )
        raise CheckpointError(
            f"{source}: holds {len(present)} transformer blocks, not the {depth} of {what}: {found}; "
            f"the file is incomplete or of another model"
        )


def build_backbone(name, weights_file=None, *, download=True, base_url=None, num_heads=None):
    """The frozen backbone ``name`` (one of BACKBONES) with its release weights.

    Weights come from ``weights_file`` when given, else from the torch hub cache, else they are
    downloaded there from the release URL (``download=False``, and always for DINOv3: an error
    naming the file and where to put it). The module's forward gives (B, C, H/p, W/p) patch
    features for inputs whose sides are multiples of ``.patch_size``; ``.embed_dim`` is C.
    """
    state, source = release_state_dict(name, weights_file, download=download, base_url=base_url)
    return backbone_from_state_dict(name, state, source, num_heads)
