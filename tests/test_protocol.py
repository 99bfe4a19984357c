"""Window placement, stitching, flip averaging and the 320 scoring grid, transcribed from
docs/method.md#evaluation-protocols."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import small_model

from engine.evaluation import make_protocol, predict_head_clusters, resize_nearest, sliding_probabilities, window_boxes


def spec_windows(height, width, crop=224, overlap=75):
    """docs/method.md#evaluation-protocols literally: n = ceil((L - 224) / 149 + 1) windows at
    min(k * 149, L - 224), row-major."""
    stride = crop - overlap
    n_h, n_w = math.ceil((height - crop) / stride + 1), math.ceil((width - crop) / stride + 1)
    return [(min(i * stride, height - crop), min(j * stride, width - crop)) for i in range(n_h) for j in range(n_w)]


@pytest.mark.parametrize("height,width", [(480, 640), (224, 224), (225, 300), (373, 224), (1000, 517)])
def test_window_placement(height, width):
    assert window_boxes(height, width, 224, 75) == spec_windows(height, width)
    assert len(window_boxes(480, 640, 224, 75)) == 12


def test_window_placement_matches_original_on_golden(golden_dir):
    golden = json.loads((golden_dir / "eval_vits16_sliding.json").read_text())
    for image in golden["per_image"]:
        width, height = image["size_wh"]
        boxes = [(h0, w0) for h0, h1, w0, w1 in image["poses_h0h1w0w1"]]
        assert window_boxes(height, width, 224, 75) == boxes


def spec_sliding_probabilities(model, image, crop=224, overlap=75):
    """One window at a time: (f(x) + flip(f(flip(x)))) / 2, bilinear to 224, softmax, average."""
    _, height, width = image.shape
    total = torch.zeros(model.num_classes, height, width)
    count = torch.zeros(height, width)
    with torch.no_grad():
        for top, left in spec_windows(height, width, crop, overlap):
            x = image[None, :, top : top + crop, left : left + crop]
            logits = (model(x)[2] + model(x.flip(3))[2].flip(3)) / 2
            prob = F.interpolate(logits, size=(crop, crop), mode="bilinear", align_corners=False).softmax(1)[0]
            total[:, top : top + crop, left : left + crop] += prob
            count[top : top + crop, left : left + crop] += 1
    return total / count


@pytest.mark.parametrize("batch_size", [1, 5, 64])
def test_stitching_and_flip_average(batch_size):
    torch.manual_seed(0)
    model = small_model()
    image = torch.randn(3, 300, 410)
    with torch.no_grad():
        ours = sliding_probabilities(model, image, 224, 75, True, "fp32", batch_size)
    torch.testing.assert_close(ours, spec_sliding_probabilities(model, image), atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours.sum(0), torch.ones(300, 410), atol=1e-5)


def test_flip_is_not_a_no_op():
    torch.manual_seed(0)
    model = small_model()
    image = torch.randn(3, 224, 224)
    with torch.no_grad():
        with_flip = sliding_probabilities(model, image, 224, 75, True, "fp32", 8)
        without = sliding_probabilities(model, image, 224, 75, False, "fp32", 8)
    assert not torch.allclose(with_flip, without)


def test_scoring_grid_is_legacy_nearest():
    """Legacy nearest takes source index floor(dst * in / out), unlike 'nearest-exact' or PIL."""
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(rng.integers(0, 27, size=(480, 640)))
    resized = resize_nearest(mask, (320, 320)).numpy()
    rows = np.floor(np.arange(320) * (480 / 320)).astype(int)
    cols = np.floor(np.arange(320) * (640 / 320)).astype(int)
    np.testing.assert_array_equal(resized, mask.numpy()[rows][:, cols])
    odd = torch.from_numpy(rng.integers(0, 27, size=(333, 517)))
    rows = np.minimum(np.floor(np.arange(320) * np.float32(333 / 320)).astype(int), 332)
    cols = np.minimum(np.floor(np.arange(320) * np.float32(517 / 320)).astype(int), 516)
    np.testing.assert_array_equal(resize_nearest(odd, (320, 320)).numpy(), odd.numpy()[rows][:, cols])


def test_single_forward_protocols_shapes():
    model = small_model()
    images = [torch.randn(3, 320, 320) for _ in range(3)]
    for name in ("resize320", "center320"):
        preds = predict_head_clusters(model, images, make_protocol(name), "fp32", 2)
        assert [tuple(p.shape) for p in preds] == [(1, 320, 320)] * 3  # (heads, H, W)


def test_unknown_protocol():
    with pytest.raises(ValueError, match="--protocol must be one of"):
        make_protocol("five-crop")


def test_windows_of_several_images_share_forwards():
    from engine.evaluation import sliding_probabilities_many

    torch.manual_seed(1)
    model = small_model()
    images = [torch.randn(3, 300, 410), torch.randn(3, 224, 260), torch.randn(3, 500, 224)]
    with torch.no_grad():
        together = sliding_probabilities_many(model, images, 224, 75, True, "fp32", 64)
        for image, probs in zip(images, together):
            torch.testing.assert_close(probs, spec_sliding_probabilities(model, image), atol=1e-5, rtol=1e-5)


def whole_image_stitching(model, image, window, overlap, batch_size):
    """Today's reference stitching: every window's crops in one stack, their full-resolution
    probabilities summed over a full-size (K, H, W) array, then divided by the counts."""
    from engine.evaluation import flip_averaged_logits

    boxes = window_boxes(image.shape[1], image.shape[2], window, overlap)
    crops = torch.stack([image[:, top : top + window, left : left + window] for top, left in boxes])
    logits = flip_averaged_logits(model, crops, True, "fp32", batch_size)
    probs = F.interpolate(logits, size=(window, window), mode="bilinear", align_corners=False).softmax(1)
    total = probs.new_zeros((probs.shape[1], *image.shape[1:]))
    count = probs.new_zeros((1, *image.shape[1:]))
    for (top, left), prob in zip(boxes, probs):
        total[:, top : top + window, left : left + window] += prob
        count[:, top : top + window, left : left + window] += 1
    return total / count


@pytest.mark.parametrize("height,width,overlap", [(300, 410, 75), (373, 900, 75), (700, 260, 0), (230, 500, 200)])
def test_band_stitching_is_bit_identical_to_whole_image_stitching(height, width, overlap):
    """Band-wise stitching (bounded memory) gives exactly today's fp32 probabilities and argmax."""
    from engine.evaluation import sliding_class_maps

    torch.manual_seed(2)
    model = small_model()
    image = torch.randn(3, height, width)
    with torch.no_grad():
        reference = whole_image_stitching(model, image, 224, overlap, 16)
        bands = sliding_probabilities(model, image, 224, overlap, True, "fp32", 16)
        classes = sliding_class_maps(model, [image], 224, overlap, True, "fp32", 16)[0]
    assert torch.equal(bands, reference)
    assert torch.equal(classes.long(), reference.argmax(0)[None])
