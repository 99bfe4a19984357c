"""Writes the DINOv3 fidelity goldens: patch features of Meta's own DinoVisionTransformer on seeded
random weights in Meta's layout. It imports Meta's code (github:facebookresearch/dinov3), which
cannot ship in this project, so it is run by hand outside it and never by the tests:

    git clone https://github.com/facebookresearch/dinov3 /tmp/dinov3src   # or any checkout
    python tests/golden/dinov3/make_golden.py --dinov3-src /tmp/dinov3src

The weights come from ``meta_layout_state`` of tests/dinov3_release.py (numpy and torch only), the
same function the tests call to rebuild them with the project's code; README.md has the procedure
and the numbers. With ``--compare`` it also prints how far timm's own models (with and without
their q/v biases, converted by timm's checkpoint_filter_fn) are from Meta's features.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for dinov3_release

from dinov3_release import meta_layout_state, seeded_images  # noqa: E402

WEIGHTS_SEED = 2025
INPUT_SEED = 7
CHANNEL_SEED = 3
NUM_CHANNELS = 48  # of the features stored, at every patch position
SIZES = ((224, 224), (256, 320))
# name: (width, heads, depth, SwiGLU); the real widths of ViT-S/16 and ViT-S+/16, a few blocks.
MODELS = {
    "dinov3_vits16": (384, 6, 2, False),
    "dinov3_vits16plus": (384, 6, 2, True),
}
# timm's models of the same architectures, for --compare.
TIMM_NAMES = {"dinov3_vits16": "vit_small_patch16_dinov3", "dinov3_vits16plus": "vit_small_plus_patch16_dinov3"}


def meta_model(width, heads, depth, swiglu):
    """Meta's DinoVisionTransformer with the arguments of its hub's dinov3_vits16(plus), fewer blocks."""
    from dinov3.models.vision_transformer import DinoVisionTransformer

    return DinoVisionTransformer(
        img_size=224,
        patch_size=16,
        in_chans=3,
        pos_embed_rope_base=100,
        pos_embed_rope_normalize_coords="separate",
        pos_embed_rope_rescale_coords=2,
        pos_embed_rope_dtype="fp32",
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        ffn_ratio=6 if swiglu else 4,
        qkv_bias=True,
        drop_path_rate=0.0,
        layerscale_init=1.0e-05,
        norm_layer="layernormbf16",
        ffn_layer="swiglu" if swiglu else "mlp",
        ffn_bias=True,
        proj_bias=True,
        n_storage_tokens=4,
        mask_k_bias=True,
    )


def meta_features(model, images):
    """(B, C, H/16, W/16): the patch tokens after the final norm, class and storage tokens dropped."""
    batch, _, height, width = images.shape
    with torch.no_grad():
        tokens = model.forward_features(images)["x_norm_patchtokens"]  # (B, N, C)
    return tokens.transpose(1, 2).reshape(batch, -1, height // 16, width // 16)


def timm_features(timm_name, state, width, heads, depth, images):
    import timm
    from timm.models.eva import checkpoint_filter_fn

    model = timm.create_model(timm_name, pretrained=False, num_classes=0, depth=depth, embed_dim=width, num_heads=heads)
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    batch, _, height, width_px = images.shape
    with torch.no_grad():
        tokens = model.eval().forward_features(images)[:, model.num_prefix_tokens :]  # (B, N, C)
    return tokens.transpose(1, 2).reshape(batch, -1, height // 16, width_px // 16)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dinov3-src", required=True, help="a checkout of github:facebookresearch/dinov3")
    parser.add_argument("--out", default=str(HERE), help="where the .npz files go")
    parser.add_argument("--compare", action="store_true", help="also print timm's models' distance to Meta's")
    args = parser.parse_args()
    sys.path.insert(0, args.dinov3_src)
    torch.set_num_threads(2)
    channels = np.sort(np.random.default_rng(CHANNEL_SEED).choice(384, NUM_CHANNELS, replace=False))
    for name, (width, heads, depth, swiglu) in MODELS.items():
        state = meta_layout_state(width, depth, heads, swiglu=swiglu, seed=WEIGHTS_SEED)
        model = meta_model(width, heads, depth, swiglu)
        model.load_state_dict(state, strict=True)
        model.eval()
        arrays = {
            "weights_seed": np.int64(WEIGHTS_SEED),
            "input_seed": np.int64(INPUT_SEED),
            "depth": np.int64(depth),
            "channels": channels.astype(np.int64),
        }
        for height, width_px in SIZES:
            images = seeded_images(INPUT_SEED, height, width_px)  # (1, 3, H, W)
            features = meta_features(model, images)  # (1, C, H/16, W/16)
            tag = f"{height}x{width_px}"
            arrays[f"features_{tag}"] = features[:, channels].numpy()
            arrays[f"max_abs_{tag}"] = np.float32(features.abs().max())
            print(f"{name} {tag}: features {tuple(features.shape)}, largest magnitude {features.abs().max():.6f}")
            if args.compare:
                largest = features.abs().max()
                for timm_name in (TIMM_NAMES[name] + "_qkvb", TIMM_NAMES[name]):
                    theirs = timm_features(timm_name, state, width, heads, depth, images)
                    ratio = float((theirs - features).abs().max() / largest)
                    print(f"  timm {timm_name}: max diff / largest magnitude = {ratio:.3e}")
        np.savez(Path(args.out) / f"features_{name}.npz", **arrays)


if __name__ == "__main__":
    main()
