"""Random DINOv3 weights in the layout of Meta's release files, from a seed, for the tests and the
fidelity goldens (tests/golden/dinov3/make_golden.py builds Meta's own model from the same call).

The keys, shapes and buffers are those of Meta's ``DinoVisionTransformer`` state_dict
(github:facebookresearch/dinov3, ``dinov3/models/vision_transformer.py`` and ``dinov3/layers``):
``cls_token`` (1, 1, C), ``storage_tokens`` (1, 4, C), ``mask_token`` (1, C), ``rope_embed.periods``
(C / heads / 4), ``patch_embed.proj``, blocks with ``norm1``, ``attn.qkv`` (its ``bias_mask`` buffer
zero on the k third, as Meta's ``init_weights`` sets it), ``attn.proj``, ``ls1.gamma``, ``norm2``,
``mlp.fc1``/``mlp.fc2`` (or SwiGLU's ``mlp.w1``/``w2``/``w3``), ``ls2.gamma``, and the final
``norm``; ``sat=True`` adds the ``local_cls_norm`` of the SAT-493M satellite ViT-L file.

The values make every part of the forward matter: LayerScale gammas from U(0.5, 1.5) (Meta
initialises them at 1e-5, which would hide a wrong attention, RoPE or bias), every bias nonzero
(the k bias too: Meta's mask has to remove it), q and k large enough for peaked attention. The
RoPE periods are Meta's ``base ** (2 i / (D / 2))`` (base 100, D the head width) rounded to
bfloat16, as the release files hold them. Only numpy and torch are used, so that the golden
script can run this outside the project, next to Meta's code.
"""

import numpy as np
import torch

from modules.backbones import ARCHITECTURE_KEY

ROPE_BASE = 100.0
NUM_STORAGE_TOKENS = 4
SWIGLU_ALIGN = 8


def rope_periods(embed_dim, num_heads):
    """Meta's RopePositionEmbedding periods (float32), as the release files store them (bfloat16)."""
    head_dim = embed_dim // num_heads
    exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)
    return (ROPE_BASE**exponents).to(torch.bfloat16)  # (D/4,)


def swiglu_hidden(embed_dim, ffn_ratio):
    """Meta's SwiGLUFFN width: two thirds of int(C * ratio), rounded up to a multiple of 8."""
    width = int(int(embed_dim * ffn_ratio) * 2 / 3)
    return width + (-width % SWIGLU_ALIGN)


def meta_layout_state(embed_dim, depth, num_heads, swiglu=False, ffn_ratio=None, patch_size=16, seed=0, sat=False):
    """A Meta-layout DINOv3 state_dict of random float32 tensors (ffn ratio: 6 for SwiGLU, else 4),
    recording its depth and width (``ARCHITECTURE_KEY``): the route of a reduced model."""
    rng = np.random.default_rng(seed)
    dim = embed_dim
    ffn_ratio = ffn_ratio or (6 if swiglu else 4)

    def normal(*shape, std=1.0, mean=0.0):
        return torch.from_numpy((mean + std * rng.standard_normal(shape)).astype(np.float32))

    def uniform(*shape, low=0.5, high=1.5):
        return torch.from_numpy(rng.uniform(low, high, shape).astype(np.float32))

    def layer_norm(prefix):
        return {prefix + "weight": normal(dim, std=0.2, mean=1.0), prefix + "bias": normal(dim, std=0.2)}

    state = {
        "cls_token": normal(1, 1, dim),
        "storage_tokens": normal(1, NUM_STORAGE_TOKENS, dim),
        "mask_token": normal(1, dim),
        "rope_embed.periods": rope_periods(dim, num_heads),
        "patch_embed.proj.weight": normal(dim, 3, patch_size, patch_size, std=(3 * patch_size * patch_size) ** -0.5),
        "patch_embed.proj.bias": normal(dim, std=0.2),
    }
    k_mask = torch.ones(3 * dim)
    k_mask[dim : 2 * dim] = 0  # Meta's init_weights: the k third of the qkv bias is masked out
    for index in range(depth):
        block = f"blocks.{index}."
        state.update(layer_norm(block + "norm1."))
        state.update(
            {
                block + "attn.qkv.weight": normal(3 * dim, dim, std=1.2 * dim**-0.5),
                block + "attn.qkv.bias": normal(3 * dim, std=0.5),
                block + "attn.qkv.bias_mask": k_mask.clone(),
                block + "attn.proj.weight": normal(dim, dim, std=dim**-0.5),
                block + "attn.proj.bias": normal(dim, std=0.2),
                block + "ls1.gamma": uniform(dim),
            }
        )
        state.update(layer_norm(block + "norm2."))
        if swiglu:
            hidden = swiglu_hidden(dim, ffn_ratio)
            mlp = {
                "w1.weight": normal(hidden, dim, std=dim**-0.5),
                "w1.bias": normal(hidden, std=0.2),
                "w2.weight": normal(hidden, dim, std=dim**-0.5),
                "w2.bias": normal(hidden, std=0.2),
                "w3.weight": normal(dim, hidden, std=hidden**-0.5),
                "w3.bias": normal(dim, std=0.2),
            }
        else:
            hidden = int(dim * ffn_ratio)
            mlp = {
                "fc1.weight": normal(hidden, dim, std=dim**-0.5),
                "fc1.bias": normal(hidden, std=0.2),
                "fc2.weight": normal(dim, hidden, std=hidden**-0.5),
                "fc2.bias": normal(dim, std=0.2),
            }
        state.update({block + "mlp." + key: value for key, value in mlp.items()})
        state[block + "ls2.gamma"] = uniform(dim)
    state.update(layer_norm("norm."))
    if sat:
        state.update(layer_norm("local_cls_norm."))
    state[ARCHITECTURE_KEY] = {"depth": depth, "embed_dim": dim}
    return state


def seeded_images(seed, height, width, batch=1):
    """The goldens' input: standard normal pixels (like ImageNet-normalised images) from a seed."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((batch, 3, height, width)).astype(np.float32))
