"""The ViT of the DINO and DINOv2 backbones: timm's VisionTransformer with each release's own positional
interpolation (DINOv3's is modules/eva.py).

timm builds the architecture (patch embedding, blocks, LayerScale, registers, final norm), so
its parameter names are timm's: for DINO they are exactly DINO's own (the released IDDC files
load with strict=True); DINOv2 release files are converted on loading (``modules/backbones.py``).

What timm does not reproduce is the positional-embedding interpolation for inputs other than the
training size: timm resamples to a size, bicubic with antialias, while DINO (and with it the
original IDDC code, docs/method.md#the-model) passes the scale factor ``(n + 0.1) / sqrt(N)`` without antialias.
The two differ numerically, so :meth:`VisionTransformer.forward` is this project's own and takes
the interpolation each release's code uses. Features are the last block's tokens after the final
LayerNorm, class (and register) tokens dropped.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer


@dataclass(frozen=True)
class PositionalInterpolation:
    """How a release's code resizes its stored positional embedding (always bicubic).

    ``offset`` > 0: ``scale_factor = (n + offset) / sqrt(N)`` as DINO and DINOv2 do (the offset
    avoids a floating-point off-by-one in the output size); ``offset`` 0: resize to the grid.
    """

    offset: float = 0.1
    antialias: bool = False


# DINO's vision_transformer.py and DINOv2's default (dinov2/models/vision_transformer.py).
DINO_INTERPOLATION = PositionalInterpolation(offset=0.1, antialias=False)


class VisionTransformer(TimmVisionTransformer):
    """ViT returning the patch-token feature map (B, C, H/p, W/p).

    ``num_registers`` > 0 uses timm's layout for register models: the positional embedding has
    no class row (it is folded into ``cls_token`` on loading) and ``reg_token`` holds the
    registers, which take no positional embedding and sit between the class and patch tokens.
    """

    def __init__(
        self,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        img_size=224,
        layer_scale=False,
        num_registers=0,
        interpolation=DINO_INTERPOLATION,
        random_init=True,
    ):
        if embed_dim % num_heads:
            raise ValueError(f"embedding dim {embed_dim} is not divisible by num_heads {num_heads}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            num_classes=0,
            global_pool="",
            dynamic_img_size=True,
            # LayerScale starts at 1.0 as DINOv2's hub models (timm: 1e-5), so random models are not near-identity.
            init_values=1.0 if layer_scale else None,
            reg_tokens=num_registers,
            no_embed_class=num_registers > 0,
            # random_init=False leaves the parameters uninitialised for weights loaded right after
            # (timm's initialisation of a ViT-B takes seconds on a CPU).
            weight_init="" if random_init else "skip",
        )
        self.patch_size = patch_size
        self.depth = depth
        self.num_heads = num_heads
        self.interpolation = interpolation

    def interpolate_pos_embed(self, grid_h, grid_w):
        """Positional embedding (1, rows, C) for a grid_h x grid_w patch grid, class row kept if stored.

        The stored table is returned unchanged only for the square training grid, as DINO and
        DINOv2 do (a non-square grid of the same count is interpolated).
        """
        class_rows = 0 if self.no_embed_class else 1
        num_stored = self.pos_embed.shape[1] - class_rows
        side = math.isqrt(num_stored)
        if grid_h * grid_w == num_stored and grid_h == grid_w:
            return self.pos_embed
        class_pos = self.pos_embed[:, :class_rows]  # (1, 0 or 1, C)
        patch_pos = self.pos_embed[:, class_rows:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, s, s)
        offset = self.interpolation.offset
        if offset:
            resize = {
                "scale_factor": ((grid_h + offset) / math.sqrt(num_stored), (grid_w + offset) / math.sqrt(num_stored))
            }
        else:
            resize = {"size": (grid_h, grid_w)}
        patch_pos = F.interpolate(
            patch_pos, mode="bicubic", antialias=self.interpolation.antialias, **resize
        )  # (1, C, gh, gw)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(
                f"positional embedding interpolated to {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)  # (1, N, C)
        return torch.cat((class_pos, patch_pos), dim=1)

    def forward(self, images):
        batch, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        patches = self.patch_embed(images).reshape(batch, grid_h * grid_w, self.embed_dim)  # (B, N, C)
        pos_embed = self.interpolate_pos_embed(grid_h, grid_w)
        cls_token = self.cls_token.expand(batch, -1, -1)  # (B, 1, C)
        if self.no_embed_class:
            registers = self.reg_token.expand(batch, -1, -1)  # (B, R, C)
            tokens = torch.cat((cls_token, registers, patches + pos_embed), dim=1)  # (B, 1+R+N, C)
        else:
            tokens = torch.cat((cls_token, patches), dim=1) + pos_embed  # (B, 1+N, C)
        tokens = self.norm(self.blocks(tokens))
        patch_tokens = tokens[:, self.num_prefix_tokens :]  # (B, N, C)
        return patch_tokens.transpose(1, 2).reshape(batch, self.embed_dim, grid_h, grid_w)  # (B, C, h, w)
