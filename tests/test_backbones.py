"""Every backbone from random weights in its release layout: loading, forwards against a plain
reference, patch 14 in the protocols, the offline error, and two training epochs of each new one."""

import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from reference_vit import reference_features, release_state

import eval as eval_cli
import predict as predict_cli
import train as train_cli
from data.synthetic import write_synthetic_cocostuff
from engine.evaluation import sliding_probabilities, whole_image_probabilities, window_boxes
from modules import backbones
from modules.backbones import (
    BACKBONES,
    SPECS,
    backbone_from_state_dict,
    build_backbone,
    release_state_dict,
    resolve_backbone_name,
)
from modules.checkpoint import iddc_state, load_iddc_model, new_iddc_model
from modules.model import IDDCModel
from modules.weights import CheckpointError

# DINO and DINOv2 (timm VisionTransformer); DINOv3 (timm Eva) has its own tests in tests/test_dinov3.py.
VIT_BACKBONES = [name for name in BACKBONES if SPECS[name].family != "dinov3"]
NEW_BACKBONES = [name for name in VIT_BACKBONES if name not in ("dino_vits16", "dino_vits8")]


def small_release_state(name, seed=0, embed_dim=64, depth=2):
    """A reduced release-layout state; DINOv2's table is 6x6 so every input size interpolates it."""
    grid = 224 // SPECS[name].patch_size if SPECS[name].family == "dino" else 6
    return release_state(name, depth=depth, embed_dim=embed_dim, grid=grid, seed=seed)


def non_square(name):
    """(H, W) = (224, 23 patches): 224x368, 224x184 or 224x322."""
    return 224, 23 * SPECS[name].patch_size


def test_registry_names():
    assert BACKBONES == (
        "dino_vits16",
        "dino_vits8",
        "dino_vitb16",
        "dino_vitb8",
        "dinov2_vits14",
        "dinov2_vitb14",
        "dinov2_vits14_reg",
        "dinov2_vitb14_reg",
        "dinov3_vits16",
        "dinov3_vits16plus",
        "dinov3_vitb16",
        "dinov3_vitl16",
    )
    assert (
        backbones.release_url("dinov2_vitb14_reg")
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth"
    )
    assert (
        backbones.release_url("dino_vitb8")
        == "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    )


@pytest.mark.parametrize("name", VIT_BACKBONES)
def test_full_size_release_layout_loads_and_runs(name):
    state = release_state(name)
    vit = backbone_from_state_dict(name, state, source=f"{name} release")
    spec = SPECS[name]
    assert (vit.embed_dim, vit.patch_size, vit.depth, vit.num_heads) == (
        spec.embed_dim,
        spec.patch_size,
        12,
        spec.num_heads,
    )
    converted = set(state) - {"mask_token", "register_tokens"} | ({"reg_token"} if spec.num_registers else set())
    assert set(vit.state_dict()) == converted
    # A 2x2-patch input: running is what is checked here (at 224 the forward of ViT-B/8 alone takes
    # seconds); the features at 224 and non-square sizes are compared with the reference per
    # architecture below, and the full-size ViT-S/16 runs at 224 in the golden evaluations.
    side = 2
    with torch.no_grad():
        features = vit(torch.randn(1, 3, side * spec.patch_size, side * spec.patch_size))
    assert features.shape == (1, spec.embed_dim, side, side) and torch.isfinite(features).all()


@pytest.mark.parametrize("name", VIT_BACKBONES)
def test_release_file_matches_reference_at_224_and_non_square(tmp_path, name):
    state = small_release_state(name, seed=1)
    torch.save(state, tmp_path / "release.pth")
    vit = build_backbone(name, tmp_path / "release.pth")
    assert vit.name == name and not any(p.requires_grad for p in vit.parameters()) and not vit.training
    for height, width in ((224, 224), non_square(name)):
        images = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(height + width))
        with torch.no_grad():
            ours = vit(images)  # (2, 64, H/p, W/p)
        expected = reference_features(name, state, images)
        assert ours.shape == (2, 64, height // vit.patch_size, width // vit.patch_size)
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "name,timm_name",
    [
        ("dino_vits16", "vit_small_patch16_224"),
        ("dinov2_vits14", "vit_small_patch14_dinov2"),
        ("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2"),
    ],
)
def test_converted_weights_are_timms_layout(name, timm_name):
    """The converted state loads strictly into timm's own model of that release and gives its
    features at the training size (where no positional interpolation is involved)."""
    state = small_release_state(name, seed=2)
    vit = backbone_from_state_dict(name, state)
    grid = 224 // SPECS[name].patch_size if SPECS[name].family == "dino" else 6
    size = grid * SPECS[name].patch_size
    reference = timm.create_model(
        timm_name, pretrained=False, num_classes=0, depth=2, embed_dim=64, num_heads=1, img_size=size
    )
    reference.load_state_dict(vit.state_dict(), strict=True)
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        tokens = reference.eval().forward_features(images)[:, reference.num_prefix_tokens :]  # (2, N, 64)
        torch.testing.assert_close(vit(images).flatten(2).transpose(1, 2), tokens, atol=1e-5, rtol=1e-5)


def test_wrong_file_for_the_name_says_which_backbone_it_is(tmp_path):
    cases = [
        ("dino_vits16", release_state("dino_vitb16", depth=1), r"DINO ViT-B/16 \(width 768\).*--backbone dino_vitb16"),
        ("dino_vits16", small_release_state("dino_vits8"), r"patch 8.*--backbone dino_vits8"),
        ("dino_vits16", small_release_state("dinov2_vits14"), r"LayerScale.*--backbone dinov2_vits14"),
        ("dinov2_vits14", small_release_state("dinov2_vits14_reg"), r"4 registers.*--backbone dinov2_vits14_reg"),
    ]
    for name, state, message in cases:
        torch.save(state, tmp_path / "weights.pth")
        with pytest.raises(CheckpointError, match=message):
            build_backbone(name, tmp_path / "weights.pth")
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="other.pth: not a ViT state_dict"):
        build_backbone("dinov2_vitb14", tmp_path / "other.pth")


def test_offline_error_names_file_and_place(tmp_path, monkeypatch, closed_port_url):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    for name in BACKBONES:
        cached = tmp_path / "hub" / "checkpoints" / SPECS[name].release_file.split("/")[-1]
        with pytest.raises(
            CheckpointError,
            match=rf"not found at {re.escape(str(cached))}; download .*{SPECS[name].release_file}.*--backbone-weights",
        ):
            release_state_dict(name, download=False)
    with pytest.raises(
        CheckpointError,
        match=r"(?s)dinov2_vitb14_reg4_pretrain\.pth.*--backbone-weights FILE with the DINOv2 ViT-B/14 with registers",
    ):
        build_backbone("dinov2_vitb14_reg", base_url=closed_port_url)


def test_train_cli_offline_error(tmp_path, monkeypatch, closed_port_url, capsys):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(backbones, "DINOV2_BASE_URL", closed_port_url)
    write_synthetic_cocostuff(tmp_path / "data", num_train=4, num_val=1, sizes=((240, 240),))
    code = train_cli.main(
        [
            "--data-root",
            str(tmp_path / "data"),
            "--backbone",
            "dinov2_vits14",
            "--output-dir",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--batch-size",
            "4",
        ]
    )
    assert code == 1  # the network failed, not the input (README, "When something goes wrong")
    printed = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        "dinov2_vits14_pretrain.pth" in printed
        and str(tmp_path / "hub" / "checkpoints") in printed
        and "--backbone-weights" in printed
    )


def test_dinov2_download_into_hub_cache(tmp_path, monkeypatch, http_server, closed_port_url):
    state = small_release_state("dinov2_vits14_reg", seed=3)
    torch.save(state, tmp_path / "served.pth")
    http_server.serve_bytes(
        "dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth", (tmp_path / "served.pth").read_bytes()
    )
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    vit = build_backbone("dinov2_vits14_reg", base_url=http_server.url("dinov2/"))
    assert (tmp_path / "hub" / "checkpoints" / "dinov2_vits14_reg4_pretrain.pth").is_file()
    images = torch.randn(1, 3, 224, 322)
    with torch.no_grad():
        torch.testing.assert_close(
            vit(images), reference_features("dinov2_vits14_reg", state, images), atol=1e-4, rtol=1e-4
        )
    build_backbone("dinov2_vits14_reg", base_url=closed_port_url)  # cached now: no network needed
    assert len(http_server.requests) == 1


def patch14_model():
    torch.manual_seed(0)
    return IDDCModel(backbone_from_state_dict("dinov2_vits14", small_release_state("dinov2_vits14", seed=4))).eval()


class ForwardSizes:
    """Records the backbone's input and output sizes."""

    def __init__(self, module):
        self.inputs, self.outputs = [], []
        module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.inputs.append(tuple(args[0].shape))
        self.outputs.append(tuple(output.shape))


def test_patch14_sliding_windows():
    model = patch14_model()
    sizes = ForwardSizes(model.vit)
    image = torch.randn(3, 300, 470)
    with torch.no_grad():
        probs = sliding_probabilities(model, image, window=224, overlap=75, flip=True, precision="fp32", batch_size=8)
    assert probs.shape == (27, 300, 470)
    torch.testing.assert_close(probs.sum(dim=0), torch.ones(300, 470))
    windows = len(window_boxes(300, 470, 224, 75))
    assert sum(shape[0] for shape in sizes.inputs) == 2 * windows  # every window and its flip
    assert {shape[1:] for shape in sizes.inputs} == {(3, 224, 224)} and {shape[1:] for shape in sizes.outputs} == {
        (64, 16, 16)
    }
    with pytest.raises(ValueError, match="--window 200 is not a multiple of the backbone's patch size 14"):
        sliding_probabilities(model, image, window=200, overlap=75, flip=False, precision="fp32", batch_size=8)


def test_320_protocols_run_patch14_at_322_and_score_at_320():
    model = patch14_model()
    sizes = ForwardSizes(model.vit)
    with torch.no_grad():
        probs = whole_image_probabilities(
            model, torch.randn(2, 3, 320, 320), flip=False, precision="fp32", batch_size=8
        )
    assert sizes.inputs == [(2, 3, 322, 322)] and sizes.outputs == [(2, 64, 23, 23)]
    assert probs.shape == (2, 27, 320, 320)
    model16 = IDDCModel(backbone_from_state_dict("dino_vits16", small_release_state("dino_vits16"))).eval()
    sizes16 = ForwardSizes(model16.vit)
    with torch.no_grad():
        whole_image_probabilities(model16, torch.randn(1, 3, 320, 320), flip=False, precision="fp32", batch_size=8)
    assert sizes16.inputs == [(1, 3, 320, 320)]  # patches 16 and 8 divide 320: unchanged, as the goldens need


def test_patch_size_is_the_short_form_of_two_backbones(tmp_path, capsys):
    assert resolve_backbone_name() == "dino_vits16"
    assert resolve_backbone_name(patch_size=8) == "dino_vits8"
    assert resolve_backbone_name("dinov2_vitb14") == "dinov2_vitb14"
    torch.save(small_release_state("dino_vits8"), tmp_path / "s8.pth")
    assert new_iddc_model(8, tmp_path / "s8.pth").backbone_name == "dino_vits8"
    with pytest.raises(SystemExit):
        train_cli.main(["--data-root", str(tmp_path), "--backbone", "dinov2_vits14", "--patch-size", "16"])
    assert "--patch-size 16 contradicts --backbone dinov2_vits14 (patch 14)" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("backbone: dino_vitl16\n")
    with pytest.raises(SystemExit):
        train_cli.main(["--data-root", str(tmp_path), "--config", str(tmp_path / "bad.yaml")])
    assert (
        "backbone: 'dino_vitl16' is not one of ['dino_vits16'" in capsys.readouterr().err
    )  # YAML values are checked as flags are


def test_released_files_without_a_name_are_recognised_by_shape(tmp_path, fake_checkpoint):
    assert load_iddc_model(fake_checkpoint)[0].backbone_name == "dino_vits16"
    for name, width in (("dino_vits8", 64), ("dino_vitb16", 768), ("dinov2_vits14_reg", 64), ("dinov2_vitb14", 768)):
        model = IDDCModel(backbone_from_state_dict(name, small_release_state(name, embed_dim=width, depth=1)))
        state = iddc_state(model)
        assert state.pop("backbone_name") == name
        torch.save(state, tmp_path / "released.pth")
        assert load_iddc_model(tmp_path / "released.pth")[0].backbone_name == name


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=4, num_val=2, sizes=((320, 256), (200, 300), (288, 352), (240, 240)))
    return root


@pytest.mark.parametrize("name", NEW_BACKBONES)
def test_each_new_backbone_trains_two_epochs(tmp_path, data_root, name):
    """Reduced depth, widths 64 (ViT-S names) and 96 (ViT-B names); the head follows the width.
    One run uses the default number of loader workers."""
    width = 64 if SPECS[name].embed_dim == 384 else 96
    torch.save(release_state(name, depth=1, embed_dim=width, grid=14, seed=5), tmp_path / "release.pth")
    out = tmp_path / "run"
    workers = [] if name == "dinov2_vits14_reg" else ["--num-workers", "0"]
    assert (
        train_cli.main(
            [
                "--data-root",
                str(data_root),
                "--backbone",
                name,
                "--backbone-weights",
                str(tmp_path / "release.pth"),
                "--output-dir",
                str(out),
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--lr",
                "5e-3",
                "--device",
                "cpu",
                "--log-every",
                "1",
                *workers,
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    val = [row for row in rows if row["kind"] == "val"]
    assert [row["epoch"] for row in val] == [0, 1] and all(np.isfinite(row["miou"]) for row in val)
    assert all(np.isfinite(row["total"]) for row in rows if row["kind"] == "train")
    state = torch.load(out / "last_model.pth", weights_only=True)
    assert state["backbone_name"] == name
    assert state["head_nonlinear"]["0.weight"].shape == (width, width, 3, 3) and state["classifier"][
        "weight"
    ].shape == (27, width, 1, 1)
    # eval.py needs no backbone flag: the checkpoint says which it is (resize320 runs patch 14 at 322).
    result = tmp_path / "eval.json"
    assert (
        eval_cli.main(
            [
                "--data-root",
                str(data_root),
                "--checkpoint",
                str(out / "last_model.pth"),
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--protocol",
                "resize320",
                "--output-json",
                str(result),
            ]
        )
        == 0
    )
    evaluated = json.loads(result.read_text())
    assert evaluated["backbone"] == name and evaluated["miou"] == pytest.approx(val[1]["miou"])


def test_eval_center320_and_predict_with_dinov2_checkpoint(tmp_path, data_root):
    model = IDDCModel(backbone_from_state_dict("dinov2_vitb14_reg", small_release_state("dinov2_vitb14_reg", seed=6)))
    torch.save(iddc_state(model), tmp_path / "dinov2.pth")
    result = tmp_path / "eval.json"
    assert (
        eval_cli.main(
            [
                "--data-root",
                str(data_root),
                "--checkpoint",
                str(tmp_path / "dinov2.pth"),
                "--device",
                "cpu",
                "--protocol",
                "center320",
                "--flip",
                "--output-json",
                str(result),
            ]
        )
        == 0
    )
    evaluated = json.loads(result.read_text())
    assert (
        evaluated["backbone"] == "dinov2_vitb14_reg"
        and 0.9 * 2 * 320 * 320 < np.sum(evaluated["confusion"]) <= 2 * 320 * 320
    )
    image = data_root / "images" / "val2017" / "000000000006.jpg"
    assert (
        predict_cli.main(
            [
                "--checkpoint",
                str(tmp_path / "dinov2.pth"),
                "--input",
                str(image),
                "--output-dir",
                str(tmp_path / "pred"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "pred" / "000000000006_clusters.png") as clusters, Image.open(image) as original:
        assert clusters.size == original.size
