"""DINOv3 backbones: Meta's features on Meta-layout weights (goldens of tests/golden/dinov3/), the
conversion against timm's, release files and their one-line errors, and a bf16 training run whose
checkpoint goes through eval.py (sliding, center320, --crf), predict.py, the hub and k-means."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from dinov3_release import meta_layout_state, seeded_images
from PIL import Image
from reference_vit import release_state
from timm.models.eva import checkpoint_filter_fn

import baseline_kmeans as kmeans_cli
import eval as eval_cli
import predict as predict_cli
import train as train_cli
from data.synthetic import write_synthetic_cocostuff
from modules.backbones import (
    ARCHITECTURE_KEY,
    BACKBONES,
    DINOV3_DOWNLOADS_PAGE,
    SPECS,
    backbone_from_state_dict,
    build_backbone,
    release_cache_path,
)
from modules.checkpoint import load_iddc_model
from modules.eva import DinoV3VisionTransformer
from modules.weights import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden" / "dinov3"
DINOV3 = ("dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16")
TIMM_MODELS = {
    "dinov3_vits16": "vit_small_patch16_dinov3_qkvb",
    "dinov3_vits16plus": "vit_small_plus_patch16_dinov3_qkvb",
    "dinov3_vitb16": "vit_base_patch16_dinov3_qkvb",
    "dinov3_vitl16": "vit_large_patch16_dinov3_qkvb",
}
# Reduced widths no release has, one per name (64 channels a head, as the releases).
TINY_WIDTHS = {"dinov3_vits16": 64, "dinov3_vits16plus": 64, "dinov3_vitb16": 96, "dinov3_vitl16": 128}


def tiny_state(name, seed=0, depth=1, width=None):
    """A reduced Meta-layout release of backbone ``name`` (its MLP kind, a width no release has)."""
    width = width or TINY_WIDTHS[name]
    return meta_layout_state(width, depth, max(1, width // 64), swiglu=SPECS[name].swiglu, seed=seed)


def one_line_error(call):
    with pytest.raises(CheckpointError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_registry_names_files_and_no_download():
    assert BACKBONES[-4:] == DINOV3
    assert [SPECS[name].release_file for name in DINOV3] == [
        "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
        "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth",
        "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
        "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
    ]
    assert [(SPECS[name].embed_dim, SPECS[name].num_heads, SPECS[name].patch_size) for name in DINOV3] == [
        (384, 6, 16),
        (384, 6, 16),
        (768, 12, 16),
        (1024, 16, 16),
    ]
    assert all(SPECS[name].num_registers == 4 and SPECS[name].base_url is None for name in DINOV3)


@pytest.mark.parametrize("name", ["dinov3_vits16", "dinov3_vits16plus"])
def test_features_are_metas(name):
    """Meta's DinoVisionTransformer features (goldens) at 224x224 and 256x320, within 1e-4 of the
    largest magnitude. The features do not depend on train()/eval() mode; with the q/v biases
    dropped, or the RoPE periods recomputed instead of taken from the file, the check fails."""
    golden = np.load(GOLDEN / f"features_{name}.npz")
    state = meta_layout_state(384, int(golden["depth"]), 6, swiglu=SPECS[name].swiglu, seed=int(golden["weights_seed"]))
    vit = backbone_from_state_dict(name, state, source="golden weights")
    channels = torch.from_numpy(golden["channels"])

    def distance(height, width):
        """max |ours - Meta's| / Meta's largest magnitude, and our (1, 384, H/16, W/16) features."""
        images = seeded_images(int(golden["input_seed"]), height, width)
        with torch.no_grad():
            features = vit(images)
        expected = torch.from_numpy(golden[f"features_{height}x{width}"])  # (1, 48, H/16, W/16)
        return float((features[:, channels] - expected).abs().max()) / float(
            golden[f"max_abs_{height}x{width}"]
        ), features

    in_eval_mode = {}
    for height, width in ((224, 224), (256, 320)):
        ratio, features = distance(height, width)
        assert features.shape == (1, 384, height // 16, width // 16)
        assert ratio <= 1e-4 and float(features.abs().max()) == pytest.approx(
            float(golden[f"max_abs_{height}x{width}"])
        )
        in_eval_mode[height, width] = features
    vit.train()
    assert torch.equal(distance(224, 224)[1], in_eval_mode[224, 224])  # no RoPE augmentation, no dropout
    vit.eval()
    file_periods = vit.rope.periods.clone()
    vit.rope.periods.copy_(vit.rope._compute_periods())  # timm's own float32 periods
    assert distance(224, 224)[0] > 1e-4
    vit.rope.periods.copy_(file_periods)
    for block in vit.blocks:
        block.attn.q_bias.data.zero_()
        block.attn.v_bias.data.zero_()
    assert distance(224, 224)[0] > 1000 * 1e-4  # as timm's models without _qkvb


@pytest.mark.parametrize("name", DINOV3)
def test_conversion_and_model_are_timms(name):
    """The converted release is what timm's checkpoint_filter_fn makes of it for timm's _qkvb model
    (plus the file's RoPE periods), and timm's model with those weights gives our features."""
    state = tiny_state(name, seed=1)
    vit = backbone_from_state_dict(name, state)
    width = TINY_WIDTHS[name]
    reference = timm.create_model(
        TIMM_MODELS[name], pretrained=False, num_classes=0, depth=1, embed_dim=width, num_heads=max(1, width // 64)
    )
    tensors = {key: value for key, value in state.items() if key != ARCHITECTURE_KEY}  # the reduced size's record
    expected = checkpoint_filter_fn(tensors, reference)
    ours = vit.state_dict()
    assert set(ours) == set(expected) | {"rope.periods"} == set(reference.state_dict()) | {"rope.periods"}
    assert all(torch.equal(ours[key], value) for key, value in expected.items())
    assert torch.equal(ours["rope.periods"], state["rope_embed.periods"].float())
    reference.load_state_dict(expected, strict=True)
    reference.rope.periods.copy_(ours["rope.periods"])
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens = reference.eval().forward_features(images)[:, 5:]  # (2, 24, C): class and 4 storage tokens dropped
        torch.testing.assert_close(vit(images).flatten(2).transpose(1, 2), tokens, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", DINOV3)
def test_release_file_in_the_hub_cache_or_given(tmp_path, monkeypatch, name):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = release_cache_path(name)
    assert cached == tmp_path / "hub" / "checkpoints" / SPECS[name].release_file
    message = one_line_error(lambda: build_backbone(name))
    assert str(cached) in message and DINOV3_DOWNLOADS_PAGE in message and "--backbone-weights FILE" in message
    cached.parent.mkdir(parents=True)
    torch.save(tiny_state(name, seed=2), cached)
    vit = build_backbone(name)
    assert isinstance(vit, DinoV3VisionTransformer) and vit.name == name and not vit.training
    assert not any(param.requires_grad for param in vit.parameters())
    assert (vit.patch_size, vit.embed_dim, vit.swiglu) == (16, TINY_WIDTHS[name], SPECS[name].swiglu)
    given = build_backbone(name, cached)
    images = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        assert vit(images).shape == (1, TINY_WIDTHS[name], 3, 5) and torch.equal(vit(images), given(images))


def test_files_of_another_family_or_size_are_one_line_errors(tmp_path):
    vitb = meta_layout_state(768, 1, 12, ffn_ratio=1, seed=3)  # the widths tell them apart; a narrow MLP is cheaper
    vitl = meta_layout_state(1024, 1, 16, ffn_ratio=1, seed=3)
    sat = {**vitl, "local_cls_norm.weight": torch.ones(1024), "local_cls_norm.bias": torch.zeros(1024)}  # SAT-493M
    cases = [
        (
            "dinov3_vits16",
            release_state("dinov2_vits14", depth=1, embed_dim=64, grid=6),
            r"DINOv2 ViT-S/14.*dinov2_vits14",
        ),
        ("dinov3_vitb16", release_state("dino_vitb16", depth=1), r"DINO ViT-B/16.*--backbone dino_vitb16"),
        ("dinov2_vits14", tiny_state("dinov3_vits16"), r"DINOv3 ViT-S/16-like ViT \(patch 16, 4 storage tokens, RoPE"),
        ("dino_vits16", tiny_state("dinov3_vitb16"), r"DINOv3 ViT-S/16-like.*not a DINO ViT-S/16"),
        ("dinov3_vits16", vitb, r"DINOv3 ViT-B/16 \(width 768\).*--backbone dinov3_vitb16"),
        ("dinov3_vitb16", vitl, r"DINOv3 ViT-L/16 \(width 1024\).*--backbone dinov3_vitl16"),
        ("dinov3_vits16", tiny_state("dinov3_vits16plus"), r"ViT-S\+/16-like.*SwiGLU.*--backbone dinov3_vits16plus"),
        ("dinov3_vits16plus", tiny_state("dinov3_vits16"), r"DINOv3 ViT-S/16-like.*GELU MLP.*--backbone dinov3_vits16"),
        ("dinov3_vitl16", sat, r"SAT-493M satellite.*\(mean \(0.43, 0.411, 0.296\).*dinov3_vitl16_pretrain_lvd1689m"),
    ]
    for name, state, pattern in cases:
        torch.save(state, tmp_path / "weights.pth")
        message = one_line_error(lambda: build_backbone(name, tmp_path / "weights.pth"))
        assert message.startswith(str(tmp_path / "weights.pth")), message
        assert re.search(pattern, message), (name, message)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=4, num_val=2, sizes=((320, 256), (256, 240)))
    return root


def train_one_epoch(folder, data_root, name, precision):
    """train.py for one epoch on a tiny release file of ``name``, validated with center320 and
    finally evaluated with sliding (one image each); returns (run folder, release file)."""
    release = folder / SPECS[name].release_file
    torch.save(tiny_state(name, seed=4), release)
    out = folder / "run"
    args = ["--data-root", str(data_root), "--backbone", name, "--backbone-weights", str(release)]
    args += ["--output-dir", str(out), "--epochs", "1", "--batch-size", "4", "--lr", "5e-3", "--device", "cpu"]
    args += ["--precision", precision, "--num-workers", "0", "--val-protocol", "center320"]
    args += ["--final-protocol", "sliding", "--val-limit", "1"]
    assert train_cli.main(args) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["total"]) for row in rows if row["kind"] == "train")
    evaluated = {row["kind"]: row for row in rows if row["kind"] in ("val", "final")}
    assert (evaluated["val"]["protocol"], evaluated["final"]["protocol"]) == ("center320", "sliding")
    assert all(np.isfinite(row["miou"]) and np.isfinite(row["probe_miou"]) for row in evaluated.values())
    state = torch.load(out / "last_model.pth", weights_only=True)
    assert state["backbone_name"] == name and "model.rope.periods" in state["backbone"]
    return out, release


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """One bf16 epoch on a tiny DINOv3 ViT-S/16, shared by the tests of its checkpoint."""
    return train_one_epoch(tmp_path_factory.mktemp("dinov3_run"), data_root, "dinov3_vits16", "bf16")


@pytest.mark.parametrize("name", DINOV3[1:])
def test_other_names_train_one_epoch(tmp_path, data_root, name):
    out, _ = train_one_epoch(tmp_path, data_root, name, "fp32")
    assert load_iddc_model(out / "last_model.pth")[0].vit.embed_dim == TINY_WIDTHS[name]


def test_checkpoint_works_without_the_release_file(tmp_path, monkeypatch, trained, data_root):
    """The bf16 run's checkpoint in eval.py (sliding with --crf, center320), predict.py and the hub
    entry, with an empty hub cache: the checkpoint carries its backbone."""
    out, release = trained
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    checkpoint = out / "last_model.pth"
    model, _ = load_iddc_model(checkpoint)
    assert model.backbone_name == "dinov3_vits16" and isinstance(model.vit, DinoV3VisionTransformer)
    with torch.no_grad():
        images = torch.randn(1, 3, 64, 80)
        torch.testing.assert_close(model.vit(images), build_backbone("dinov3_vits16", release)(images))
    results = {}
    for protocol, extra in (("sliding", ["--crf", "--crf-workers", "0"]), ("center320", [])):
        result = tmp_path / f"{protocol}.json"
        args = ["--data-root", str(data_root), "--checkpoint", str(checkpoint), "--device", "cpu"]
        args += ["--num-workers", "0", "--limit", "1", "--protocol", protocol, "--output-json", str(result), *extra]
        assert eval_cli.main(args) == 0
        results[protocol] = json.loads(result.read_text())
        assert results[protocol]["backbone"] == "dinov3_vits16" and np.isfinite(results[protocol]["miou"])
    image = sorted((data_root / "images" / "val2017").glob("*.jpg"))[0]
    predicted = tmp_path / "pred"
    args = ["--checkpoint", str(checkpoint), "--input", str(image), "--output-dir", str(predicted), "--device", "cpu"]
    assert predict_cli.main(args) == 0
    with Image.open(predicted / f"{image.stem}_clusters.png") as clusters, Image.open(image) as original:
        assert clusters.size == original.size
    hub_model = torch.hub.load(str(ROOT), "iddc_checkpoint", source="local", path=str(checkpoint))
    assert not hub_model.training and hub_model.backbone_name == "dinov3_vits16"
    with torch.no_grad():
        torch.testing.assert_close(hub_model(images)[2], model.eval()(images)[2])


def test_kmeans_baseline_and_train_errors(tmp_path, monkeypatch, trained, data_root, capsys):
    _, release = trained
    result = tmp_path / "kmeans.json"
    args = ["--data-root", str(data_root), "--backbone", "dinov3_vits16", "--backbone-weights", str(release)]
    args += ["--num-samples", "64", "--fit-images", "2", "--fit-size", "224", "--iterations", "3", "--restarts", "1"]
    args += ["--limit", "1"]
    args += ["--device", "cpu", "--num-workers", "0", "--output-json", str(result)]
    assert kmeans_cli.main(args) == 0
    assert json.loads(result.read_text())["backbone"] == "dinov3_vits16"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    args = ["--data-root", str(data_root), "--backbone", "dinov3_vitb16", "--output-dir", str(tmp_path / "run")]
    assert train_cli.main([*args, "--device", "cpu", "--num-workers", "0", "--batch-size", "4"]) == 2
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    assert printed.startswith("error: ") and SPECS["dinov3_vitb16"].release_file in printed
    assert str(tmp_path / "hub" / "checkpoints") in printed and DINOV3_DOWNLOADS_PAGE in printed
