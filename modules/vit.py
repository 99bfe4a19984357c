"""A ViT with DINO's parameter names, so DINO release files load with strict=True.

Written for this project rather than taken from timm because two numerical details must match
the original IDDC code exactly (SPEC §1): the bicubic positional-embedding interpolation with
DINO's ``(n + 0.1) / sqrt(N)`` scale factor, and the features taken after the final LayerNorm.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d_head)
        x = F.scaled_dot_product_attention(query, key, value)  # (B, heads, T, d_head)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, C)


class VisionTransformer(nn.Module):
    """DINO ViT returning the patch-token feature map (B, C, H/p, W/p)."""

    def __init__(self, patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, img_size=224):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def interpolate_pos_embed(self, grid_h, grid_w):
        """Positional embedding for a grid_h x grid_w patch grid.

        Follows the official DINO ViT deliberately: bicubic, no antialias, the scale factor
        (n + 0.1) / sqrt(N) passed to interpolate (not an output size), and the stored table
        returned unchanged only for the square training grid.
        """
        num_stored = self.pos_embed.shape[1] - 1
        side = int(math.sqrt(num_stored))
        if grid_h * grid_w == num_stored and grid_h == grid_w:
            return self.pos_embed
        cls_pos = self.pos_embed[:, :1]  # (1, 1, C)
        patch_pos = self.pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)  # (1, C, s, s)
        patch_pos = F.interpolate(
            patch_pos,
            scale_factor=((grid_h + 0.1) / math.sqrt(num_stored), (grid_w + 0.1) / math.sqrt(num_stored)),
            mode="bicubic",
        )  # (1, C, grid_h, grid_w)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise RuntimeError(f"positional embedding interpolated to {tuple(patch_pos.shape[-2:])}, expected {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)  # (1, N, C)
        return torch.cat((cls_pos, patch_pos), dim=1)

    def forward(self, images):
        batch, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        tokens = self.patch_embed(images)  # (B, N, C)
        tokens = torch.cat((self.cls_token.expand(batch, -1, -1), tokens), dim=1)  # (B, 1+N, C)
        tokens = tokens + self.interpolate_pos_embed(grid_h, grid_w)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return tokens[:, 1:].transpose(1, 2).reshape(batch, self.embed_dim, grid_h, grid_w)  # (B, C, h, w)


def _init_weights(module):
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def vit_arch_from_state_dict(state_dict, num_heads=None):
    """Read (patch_size, embed_dim, depth, num_heads, img_size) off a ViT state_dict's tensors.

    The number of heads leaves no trace in the tensors; DINO's ViTs use 64 channels a head.
    """
    try:
        patch_weight = state_dict["patch_embed.proj.weight"]
        pos_embed = state_dict["pos_embed"]
    except KeyError as err:
        raise KeyError(f"not a ViT state_dict: key {err} is missing") from err
    embed_dim, _, patch_size, _ = patch_weight.shape
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    grid = int(round(math.sqrt(pos_embed.shape[1] - 1)))
    heads = num_heads or max(1, embed_dim // 64)
    return dict(patch_size=int(patch_size), embed_dim=int(embed_dim), depth=depth, num_heads=heads, img_size=grid * int(patch_size))
