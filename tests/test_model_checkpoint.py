"""The model against the original's logits, and every checkpoint format loaded strictly."""

import urllib.request

import numpy as np
import pytest
import torch
from helpers import save_dino, save_released, small_model

from modules.backbones import ARCHITECTURE_KEY, release_state_dict
from modules.checkpoint import iddc_state, load_iddc_model, new_iddc_model
from modules.weights import CheckpointError, save_atomic


@pytest.mark.parametrize(
    "input_key,feature_key,code_key",
    [
        ("input", "features", "codes"),
        ("input_h256_w320", "features_h256_w320", "codes_h256_w320"),
    ],
)
def test_logits_match_original(fake_checkpoint, golden_dir, input_key, feature_key, code_key):
    golden = np.load(golden_dir / "logits_vits16.npz")
    model, _ = load_iddc_model(fake_checkpoint, patch_size=16)
    with torch.no_grad():
        features, _, codes = model.eval()(torch.from_numpy(golden[input_key]))
    np.testing.assert_allclose(features.numpy(), golden[feature_key], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(codes.numpy(), golden[code_key], atol=1e-4, rtol=1e-4)


def test_released_checkpoint_has_official_keys(fake_checkpoint, golden_dir):
    import json

    fingerprint = json.loads((golden_dir / "checkpoint_fingerprint.json").read_text())["tensors"]
    model, _ = load_iddc_model(fake_checkpoint)
    state = iddc_state(model)
    ours = {
        f"{part}/{key}": list(value.shape)
        for part in ("backbone", "head_nonlinear", "classifier")
        for key, value in state[part].items()
    }
    assert ours == {key: value["shape"] for key, value in fingerprint.items()}
    assert len(state["backbone"]) == 150


def test_round_trip_released_format(tmp_path):
    model = small_model()
    path = save_released(model, tmp_path / "m.pth", epoch=3, config={"lr": 5e-4})
    loaded, meta = load_iddc_model(path)
    assert meta == {
        "epoch": 3,
        "config": {"lr": 5e-4},
        "backbone_name": "dino_vits16",
        "backbone_architecture": {"depth": 2, "embed_dim": 64},
    }
    assert (loaded.vit.depth, loaded.vit.embed_dim, loaded.patch_size, loaded.num_classes) == (2, 64, 16, 27)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[2], model(x)[2])
    # weights_only loading, as the original code's users will do with default torch.load
    assert set(torch.load(path, weights_only=True)) == {
        "backbone",
        "head_nonlinear",
        "classifier",
        "epoch",
        "config",
        "backbone_name",
        "backbone_architecture",
    }


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = iddc_state(small_model())
    del state["head_nonlinear"]["2.bias"]
    state["classifier"]["extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"(?s)head_nonlinear.*missing: 2\.bias"):
        load_iddc_model(tmp_path / "bad.pth")
    state = iddc_state(small_model())
    state["backbone"]["model.blocks.0.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad2.pth")
    with pytest.raises(CheckpointError, match="unexpected: blocks.0.extra"):
        load_iddc_model(tmp_path / "bad2.pth")


def test_patch8_weights_into_patch16_model_named(tmp_path):
    path = save_released(small_model(patch_size=8), tmp_path / "s8.pth")
    with pytest.raises(CheckpointError, match=r"patch size 8 .*64x3x8x8.*--expect-patch-size 16"):
        load_iddc_model(path, patch_size=16)
    assert load_iddc_model(path, patch_size=8)[0].patch_size == 8


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_iddc_model(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read"):
        load_iddc_model(tmp_path / "junk.pth")
    dino = save_dino(small_model(), tmp_path / "dino.pth")
    with pytest.raises(CheckpointError, match="DINO backbone file"):
        load_iddc_model(dino)


def test_dino_release_format_loads_strictly(tmp_path):
    source = small_model(seed=1)
    path = save_dino(source, tmp_path / "dino.pth")
    model = new_iddc_model(16, backbone_weights=path)
    for key, value in source.vit.state_dict().items():
        torch.testing.assert_close(model.vit.state_dict()[key], value)
    state = torch.load(path)
    state.pop("norm.bias")
    torch.save(state, tmp_path / "dino_bad.pth")
    with pytest.raises(CheckpointError, match="missing: norm.bias"):
        new_iddc_model(16, backbone_weights=tmp_path / "dino_bad.pth")
    # DINO's full training checkpoints keep the ViT under teacher/backbone.
    full = {
        "teacher": {f"backbone.{k}": v for k, v in source.vit.state_dict().items()}
        | {"head.last_layer.weight": torch.zeros(1)},
        ARCHITECTURE_KEY: state[ARCHITECTURE_KEY],  # a reduced model's record
    }
    torch.save(full, tmp_path / "dino_full.pth")
    assert new_iddc_model(16, backbone_weights=tmp_path / "dino_full.pth").vit.depth == 2


def test_iddc_checkpoint_never_touches_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    path = save_released(small_model(), tmp_path / "m.pth")
    load_iddc_model(path)


def test_dino_offline_error_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match=r"dino_deitsmall8_300ep_pretrain\.pth"):
        release_state_dict("dino_vits8", download=False)
    # A closed loopback port stands for "offline".
    with pytest.raises(CheckpointError, match=r"(?s)dino_deitsmall16_pretrain\.pth.*--backbone-weights"):
        release_state_dict("dino_vits16", base_url="http://127.0.0.1:9/")


def test_dino_download_into_hub_cache(tmp_path, monkeypatch, http_server):
    source = small_model(seed=2)
    save_dino(source, tmp_path / "dino.pth")
    http_server.serve_bytes(
        "dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth", (tmp_path / "dino.pth").read_bytes()
    )
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    state, _ = release_state_dict("dino_vits16", base_url=http_server.url("dino/"))
    assert (tmp_path / "hub" / "checkpoints" / "dino_deitsmall16_pretrain.pth").is_file()
    torch.testing.assert_close(state["pos_embed"], source.vit.pos_embed.detach())
    state, _ = release_state_dict("dino_vits16", base_url="http://127.0.0.1:9/")  # cached now: no network needed
    assert len(http_server.requests) == 1


def test_save_atomic_keeps_good_file_on_failure(tmp_path):
    path = tmp_path / "best.pth"
    save_atomic({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        save_atomic({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pth"]
