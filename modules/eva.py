"""The DINOv3 ViT: timm's Eva model as timm builds DINOv3 (``vit_*_patch16_dinov3_qkvb``), returning
the patch-token feature map (B, C, H/16, W/16).

timm holds DINOv3 as an ``Eva`` with RoPE and no learned positional table, 4 storage tokens
(timm's ``reg_token``) after the class token, LayerScale (``gamma_1``/``gamma_2``), LayerNorm eps
1e-5 (Meta's ``layernormbf16`` is a plain LayerNorm with that eps) and, in the ``plus`` sizes, a
SwiGLU MLP. The ``_qkvb`` variants carry the q and v biases of Meta's release files (the k bias
is masked to zero by Meta's ``LinearKMaskedBias``); the variants without ``_qkvb`` have no qkv
bias at all and would silently drop the release's. Release files are converted to this layout by
``modules/backbones.py``.

Two things differ from timm's own models:

* the RoPE ``periods`` are part of the state_dict (``rope.periods``). Meta's model computes its
  rotations from the periods stored in the release file, and those are not timm's freshly
  computed float32 values (the release files hold them rounded to bfloat16), so the file's
  periods are loaded, and kept in IDDC checkpoints, for the features to be Meta's;
* the forward returns the patch tokens of the last block after the final LayerNorm as a map,
  class and storage tokens dropped, as for DINO and DINOv2.

RoPE positions are computed for every grid (coordinates normalised per axis), so no input size
needs an interpolation. Meta's training-time RoPE augmentations (``rescale_coords=2``, jitter,
shift) are not configured here, and every dropout rate is 0, so the features are the same with
the module in ``train()`` and ``eval()`` mode.
"""

from functools import partial

from timm.layers import LayerNorm
from timm.models.eva import Eva

# Meta's dinov3/hub/backbones.py: RoPE base 100, LayerNorm eps 1e-5, 4 storage tokens, patch 16.
ROPE_BASE = 100
LAYER_NORM_EPS = 1e-5
NUM_STORAGE_TOKENS = 4
# timm's DINOv3 "plus" models pad the SwiGLU hidden width to a multiple of 8, as Meta's SwiGLUFFN.
SWIGLU_ALIGN = 8


class DinoV3VisionTransformer(Eva):
    """DINOv3 ViT with timm's ``vit_*_patch16_dinov3_qkvb`` architecture and any depth and width.

    ``mlp_ratio`` is the MLP's hidden width over ``embed_dim`` as timm counts it: for SwiGLU the
    width of each of the two input projections (Meta's ratio 6 of ViT-S+ is timm's 4).
    ``random_init=False`` builds the parameters without initialising them (timm's initialisation
    of a ViT-L takes seconds on a CPU), for weights loaded right after.
    """

    def __init__(
        self,
        patch_size=16,
        embed_dim=384,
        depth=12,
        num_heads=6,
        mlp_ratio=4.0,
        swiglu=False,
        num_storage_tokens=NUM_STORAGE_TOKENS,
        random_init=True,
    ):
        if embed_dim % (4 * num_heads):
            raise ValueError(
                f"embedding dim {embed_dim} is not divisible by 4 x num_heads ({num_heads}), as RoPE needs"
            )
        super().__init__(
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            swiglu_mlp=swiglu,
            swiglu_align_to=SWIGLU_ALIGN if swiglu else 0,
            qkv_bias=True,
            # LayerScale starts at 1.0 (timm and Meta: 1e-5) so that random models are not near-identity.
            init_values=1.0,
            rope_type="dinov3",
            rope_temperature=ROPE_BASE,
            rope_rotate_half=True,
            use_rot_pos_emb=True,
            use_abs_pos_emb=False,
            num_reg_tokens=num_storage_tokens,
            use_fc_norm=False,
            norm_layer=partial(LayerNorm, eps=LAYER_NORM_EPS),
            num_classes=0,
            global_pool="",
            dynamic_img_size=True,
            device=None if random_init else "meta",
        )
        if not random_init:
            self.to_empty(device="cpu")
            for module in self.modules():
                if module is not self and hasattr(module, "init_non_persistent_buffers"):
                    module.init_non_persistent_buffers()  # the zero k bias and the default RoPE periods
        # Persistent, so that the release file's periods are loaded and saved with the weights.
        self.rope.register_buffer("periods", self.rope.periods, persistent=True)
        self.patch_size = patch_size
        self.depth = depth
        self.num_heads = num_heads
        self.swiglu = swiglu

    def forward(self, images):
        batch, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        tokens = self.forward_features(images)  # (B, 1+R+N, C), after the final norm
        patch_tokens = tokens[:, self.num_prefix_tokens :]  # (B, N, C)
        return patch_tokens.transpose(1, 2).reshape(batch, self.embed_dim, grid_h, grid_w)  # (B, C, h, w)
