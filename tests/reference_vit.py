"""Release-layout random weights and a plain functional ViT forward over them, as references.

``release_state`` writes random tensors under the key names and shapes the DINO and DINOv2
projects publish (docs/method.md#the-model and docs/backbones.md; DINOv2: ``pos_embed`` with the
class token's row, ``register_tokens``, ``mask_token``, ``ls1.gamma``/``ls2.gamma``), without going
through timm or ``modules/``: the releases' facts (width, heads, patch, registers, LayerScale and
positional interpolation) are this file's own table, ``RELEASES``, not the project's.
``reference_features`` reads those tensors directly, following the official forwards step by step
(DINO's vision_transformer.py, DINOv2's dinov2/models/vision_transformer.py and hub/backbones.py):
patch conv, class token, positional embedding interpolated by the release's own rule, registers
inserted after the class token, blocks with hand-written attention and optional LayerScale, final
LayerNorm. It is deliberately naive, a second reading of the same facts against which
``modules/backbones.py`` (timm + conversion) is compared.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from modules.backbones import ARCHITECTURE_KEY  # how a reduced model records its size


class Release(NamedTuple):
    family: str  # "dino" or "dinov2"
    patch_size: int
    embed_dim: int
    num_heads: int
    depth: int
    num_registers: int
    layer_scale: bool
    # DINO's interpolate_pos_encoding: bicubic, scale factor (n + 0.1) / sqrt(N), no antialias;
    # DINOv2 keeps that rule for its plain models, while its hub builds the register models with
    # interpolate_offset=0 (to the size) and interpolate_antialias=True.
    offset: float
    antialias: bool


RELEASES = {
    "dino_vits16": Release("dino", 16, 384, 6, 12, 0, False, 0.1, False),
    "dino_vits8": Release("dino", 8, 384, 6, 12, 0, False, 0.1, False),
    "dino_vitb16": Release("dino", 16, 768, 12, 12, 0, False, 0.1, False),
    "dino_vitb8": Release("dino", 8, 768, 12, 12, 0, False, 0.1, False),
    "dinov2_vits14": Release("dinov2", 14, 384, 6, 12, 0, True, 0.1, False),
    "dinov2_vitb14": Release("dinov2", 14, 768, 12, 12, 0, True, 0.1, False),
    "dinov2_vits14_reg": Release("dinov2", 14, 384, 6, 12, 4, True, 0.0, True),
    "dinov2_vitb14_reg": Release("dinov2", 14, 768, 12, 12, 4, True, 0.0, True),
}


def release_state(name, depth=None, embed_dim=None, grid=None, seed=0):
    """Random weights of backbone ``name`` in its project's release layout.

    Full size by default (depth 12, the release's width, and its training grid: 224 px for DINO,
    518 px = 37x37 patches for DINOv2); ``depth``/``embed_dim``/``grid`` shrink it, and a shrunk
    state records its depth and width (``ARCHITECTURE_KEY``), as a reduced model must.
    """
    spec = RELEASES[name]
    dim = embed_dim or spec.embed_dim
    depth = depth or spec.depth
    grid = grid or (224 // spec.patch_size if spec.family == "dino" else 37)
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape, std=0.02, mean=0.0):
        return torch.empty(shape).normal_(mean, std, generator=generator)

    state = {
        "cls_token": normal(1, 1, dim, std=0.5),
        "pos_embed": normal(1, 1 + grid * grid, dim, std=0.5),
        "patch_embed.proj.weight": normal(dim, 3, spec.patch_size, spec.patch_size, std=0.05),
        "patch_embed.proj.bias": normal(dim),
    }
    if spec.num_registers:
        state["register_tokens"] = normal(1, spec.num_registers, dim, std=0.5)
    if spec.family == "dinov2":
        state["mask_token"] = normal(1, dim)
    hidden = 4 * dim
    for i in range(depth):
        block = f"blocks.{i}."
        state.update(
            {
                block + "norm1.weight": normal(dim, std=0.1, mean=1.0),
                block + "norm1.bias": normal(dim),
                block + "attn.qkv.weight": normal(3 * dim, dim, std=0.1),
                block + "attn.qkv.bias": normal(3 * dim),
                block + "attn.proj.weight": normal(dim, dim, std=0.05),
                block + "attn.proj.bias": normal(dim),
                block + "norm2.weight": normal(dim, std=0.1, mean=1.0),
                block + "norm2.bias": normal(dim),
                block + "mlp.fc1.weight": normal(hidden, dim, std=0.05),
                block + "mlp.fc1.bias": normal(hidden),
                block + "mlp.fc2.weight": normal(dim, hidden, std=0.05),
                block + "mlp.fc2.bias": normal(dim),
            }
        )
        if spec.layer_scale:
            state[block + "ls1.gamma"] = normal(dim, std=0.2, mean=0.5)
            state[block + "ls2.gamma"] = normal(dim, std=0.2, mean=0.5)
    state["norm.weight"] = normal(dim, std=0.1, mean=1.0)
    state["norm.bias"] = normal(dim)
    if (depth, dim) != (spec.depth, spec.embed_dim):
        state[ARCHITECTURE_KEY] = {"depth": depth, "embed_dim": dim}
    return state


def _interpolated_pos_embed(pos_embed, grid_h, grid_w, offset, antialias):
    """DINO / DINOv2's interpolate_pos_encoding: the stored table for the square training grid,
    else bicubic with scale factor (n + offset) / sqrt(N), or to the size when offset is 0."""
    stored = pos_embed.shape[1] - 1
    side = int(math.sqrt(stored))
    if grid_h * grid_w == stored and grid_h == grid_w:
        return pos_embed
    table = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if offset:
        resized = F.interpolate(
            table,
            scale_factor=((grid_h + offset) / side, (grid_w + offset) / side),
            mode="bicubic",
            antialias=antialias,
        )
    else:
        resized = F.interpolate(table, size=(grid_h, grid_w), mode="bicubic", antialias=antialias)
    return torch.cat((pos_embed[:, :1], resized.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)), dim=1)


def reference_features(name, state, images):
    """Patch features (B, C, H/p, W/p) of ``images`` under release-layout ``state``."""
    spec = RELEASES[name]
    dim = state["cls_token"].shape[-1]
    heads = spec.num_heads if dim == spec.embed_dim else max(1, dim // 64)
    p = spec.patch_size
    batch, _, height, width = images.shape
    grid_h, grid_w = height // p, width // p
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((state["cls_token"].expand(batch, -1, -1), x), dim=1)
    x = x + _interpolated_pos_embed(state["pos_embed"], grid_h, grid_w, spec.offset, spec.antialias)
    if "register_tokens" in state:
        x = torch.cat((x[:, :1], state["register_tokens"].expand(batch, -1, -1), x[:, 1:]), dim=1)
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    for i in range(depth):
        w = {key[len(f"blocks.{i}.") :]: value for key, value in state.items() if key.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (dim,), w["norm1.weight"], w["norm1.bias"], eps=1e-6)
        qkv = F.linear(h, w["attn.qkv.weight"], w["attn.qkv.bias"]).reshape(batch, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * (dim // heads) ** -0.5).softmax(dim=-1)
        out = (attention @ v).transpose(1, 2).reshape(batch, -1, dim)
        out = F.linear(out, w["attn.proj.weight"], w["attn.proj.bias"])
        x = x + out * w.get("ls1.gamma", 1.0)
        h = F.layer_norm(x, (dim,), w["norm2.weight"], w["norm2.bias"], eps=1e-6)
        out = F.linear(
            F.gelu(F.linear(h, w["mlp.fc1.weight"], w["mlp.fc1.bias"])), w["mlp.fc2.weight"], w["mlp.fc2.bias"]
        )
        x = x + out * w.get("ls2.gamma", 1.0)
    x = F.layer_norm(x, (dim,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    patches = x[:, 1 + state.get("register_tokens", torch.empty(1, 0)).shape[1] :]
    return patches.transpose(1, 2).reshape(batch, dim, grid_h, grid_w)
