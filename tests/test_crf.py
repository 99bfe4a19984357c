"""Dense CRF: STEGO's image reconstruction, edge snapping, shapes, the worker pool, and the CLIs."""

import json
import math
import os
import signal
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from helpers import save_released, small_model, wait_exit
from PIL import Image

import eval as eval_cli
import predict as predict_cli
from data.synthetic import make_scene, write_synthetic_cocostuff
from engine.crf import CRFPool, crf_image, crf_inputs, crf_maps, dense_crf, fit_size
from engine.evaluation import evaluate, make_protocol
from modules.checkpoint import load_iddc_model
from utils.cli import run_cli
from utils.constants import IMAGENET_MEAN, IMAGENET_STD

EDGE = 40


def edge_scene(height=48, width=96, ramp_centre=52.0):
    """A black | white image with its edge at column EDGE, and blurred two-class probabilities
    whose 50% line lies at ``ramp_centre`` (the coarse, misplaced boundary a ViT produces)."""
    pixels = torch.zeros(3, height, width)
    pixels[:, :, EDGE:] = 1.0
    columns = torch.arange(width, dtype=torch.float32)
    right = torch.sigmoid((columns - ramp_centre) / 6).expand(height, width)  # (H, W)
    return TF.normalize(pixels, IMAGENET_MEAN, IMAGENET_STD), torch.stack((1 - right, right))  # (3, H, W), (2, H, W)


def test_crf_image_is_stegos_unnormalised_bgr_uint8():
    torch.manual_seed(0)
    raw = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    normalized = TF.normalize(raw.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    # STEGO: np.array(to_pil_image(unnorm(x)))[:, :, ::-1] with unnorm = x * std + mean per channel.
    unnorm = normalized.clone()
    for channel, mean, std in zip(unnorm, IMAGENET_MEAN, IMAGENET_STD):
        channel.mul_(std).add_(mean)
    expected = np.array(TF.to_pil_image(unnorm))[:, :, ::-1]
    image = crf_image(normalized)
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3) and image.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(image, expected)
    # BGR: a pure red input lands in the last channel
    red = TF.normalize(torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 4, 4), IMAGENET_MEAN, IMAGENET_STD)
    assert crf_image(red)[0, 0].tolist() == [0, 0, 255]


def test_crf_snaps_the_boundary_to_the_colour_edge():
    normalized, probs = edge_scene()
    before = probs.argmax(dim=0)
    assert (before[:, EDGE:52] == 0).all()  # the coarse map misses the edge by 12 pixels
    image, probs_np = crf_inputs(normalized, probs)
    marginals = dense_crf(image, probs_np)
    assert marginals.shape == (2, 48, 96) and marginals.dtype == np.float32
    np.testing.assert_allclose(marginals.sum(axis=0), 1, atol=1e-4)
    maps = crf_maps(image, probs_np)
    assert maps.shape == (1, 48, 96) and maps.dtype == np.int32
    expected = np.zeros((48, 96), dtype=np.int32)
    expected[:, EDGE:] = 1
    np.testing.assert_array_equal(maps[0], expected)


def test_heads_are_refined_separately():
    normalized, probs = edge_scene()
    image, _ = crf_inputs(normalized, probs)
    flipped = probs.flip(dims=[0])  # second head: the same evidence with the classes swapped
    maps = crf_maps(image, torch.cat((probs, flipped)).numpy(), heads=2)
    assert maps.shape == (2, 48, 96)
    np.testing.assert_array_equal(maps[1], 1 - maps[0])


def test_large_maps_are_refined_on_a_downscaled_copy():
    assert fit_size(300, 400, 1 << 20) == (300, 400)
    height, width = fit_size(3000, 4000, 1 << 20)
    assert height * width <= 1 << 20 and abs(height / width - 0.75) < 0.01
    normalized, probs = edge_scene(height=60, width=120)
    with CRFPool(workers=0, max_pixels=60 * 120 // 4) as pool:
        pool.submit(normalized, probs, "big")
        ((key, maps),) = pool.finished()
    assert key == "big" and maps.shape == (1, 60, 120) and maps.dtype == torch.int64
    assert set(maps.unique().tolist()) == {0, 1}
    boundary = (maps[0] == 1).float().argmax(dim=1)  # first column of class 1 in each row
    assert ((boundary - EDGE).abs() <= 2).all()  # within a downscaled pixel of the edge


def test_pool_gives_the_same_maps_as_one_process():
    generator = torch.Generator().manual_seed(1)
    jobs = []
    for index, (height, width) in enumerate([(40, 56), (64, 48), (32, 32), (50, 70), (45, 45)]):
        image = torch.randn(3, height, width, generator=generator)
        probs = torch.randn(6, height, width, generator=generator).mul(3).softmax(dim=0)
        jobs.append((f"image{index}", image, torch.cat((probs, probs.roll(1, dims=0)))))
    results = {}
    for workers in (0, 2):
        with CRFPool(workers=workers, heads=2, max_pending=2) as pool:
            seen = []
            for key, image, probs in jobs:
                pool.submit(image, probs, key)
                seen.extend(pool.finished())
            seen.extend(pool.finished(wait_all=True))
        assert [key for key, _ in seen] == [key for key, _, _ in jobs]  # submission order
        results[workers] = seen
    for (_, single), (_, pooled) in zip(results[0], results[2]):
        assert single.shape == pooled.shape and single.shape[0] == 2
        assert torch.equal(single, pooled)
    with pytest.raises(ValueError, match="differ in size"):
        CRFPool(workers=0).submit(torch.zeros(3, 8, 8), torch.zeros(2, 9, 8), "bad")


def open_and_close_pools(argv):
    """A command's main: pools closed normally and by an error right after their workers' fork."""
    for _ in range(int(argv[0])):
        with CRFPool(workers=2) as pool:
            mask = pool._pool.apply(signal.pthread_sigmask, (signal.SIG_BLOCK, []))
            assert signal.SIGTERM not in mask, mask
            assert pool._pool.apply(signal.getsignal, (signal.SIGTERM,)) == signal.SIG_DFL
        try:
            with CRFPool(workers=2):
                raise ValueError("an error just after the workers were forked")
        except ValueError:
            pass
    return 0


def test_pool_workers_end_by_sigterm_even_just_after_their_fork():
    """Commands catch SIGTERM in Python (utils/cli.py) and forked workers inherit the handler; a
    SIGTERM from ``Pool.terminate()`` that reached a worker right after its fork was lost, and an
    error that closed the pool at once then hung the command (and CI) in the join."""
    pid = os.fork()
    if pid == 0:  # a command's process, forked from this one (torch and the project imported)
        code = 1
        try:
            code = run_cli(open_and_close_pools, ["6"])
        finally:
            os._exit(code)
    code = wait_exit(pid, time.monotonic() + 60)
    assert code is not None, "the pools' workers did not end within 60 s"
    assert code == 0


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cocostuff")
    write_synthetic_cocostuff(root, num_train=0, num_val=3, sizes=((320, 256), (200, 300), (448, 320)))
    return root


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    return save_released(small_model(), tmp_path_factory.mktemp("ckpt") / "small.pth")


def run_eval(tmp_path, data_root, checkpoint, *flags):
    out = tmp_path / "crf.json"
    assert (
        eval_cli.main(
            [
                "--data-root",
                str(data_root),
                "--checkpoint",
                str(checkpoint),
                "--device",
                "cpu",
                "--output-json",
                str(out),
                *flags,
            ]
        )
        == 0
    )
    return json.loads(out.read_text())


@pytest.mark.parametrize("fixture", ["synthetic", "golden"])
def test_eval_center320_flip_crf(tmp_path, fixture, synthetic_root, small_checkpoint, fake_checkpoint, golden_dir):
    """The peers' full protocol through eval.py with its default workers; on the synthetic set also
    against CRFs computed in this process."""
    data_root, checkpoint = (
        (synthetic_root, small_checkpoint) if fixture == "synthetic" else (golden_dir / "cocostuff", fake_checkpoint)
    )
    limit = 3  # of the golden set's 6 images (the synthetic set has 3)
    result = run_eval(
        tmp_path, data_root, checkpoint, "--protocol", "center320", "--flip", "--crf", "--limit", str(limit)
    )
    assert result["protocol"] == "center320" and result["protocol_settings"]["crf"] is True
    assert result["protocol_settings"]["flip"] is True and result["num_images"] == limit
    confusion = np.array(result["confusion"])
    model, _ = load_iddc_model(checkpoint)
    common = dict(num_workers=0, progress=False, limit=limit)
    plain = evaluate(model, data_root, make_protocol("center320", flip=True), **common)
    assert confusion.sum() == plain.confusion.sum()  # the same pixels are scored
    assert not np.array_equal(confusion, plain.confusion)  # and the CRF changed predictions
    if fixture == "synthetic":
        inline = evaluate(model, data_root, make_protocol("center320", flip=True, crf=True), crf_workers=0, **common)
        np.testing.assert_array_equal(confusion, inline.confusion)


def test_eval_sliding_crf_runs_at_the_image_size(tmp_path, synthetic_root, small_checkpoint):
    result = run_eval(tmp_path, synthetic_root, small_checkpoint, "--crf", "--crf-workers", "0", "--limit", "2")
    assert result["protocol"] == "sliding" and result["protocol_settings"]["crf"] is True
    assert 0.9 * 2 * 320 * 320 < np.array(result["confusion"]).sum() <= 2 * 320 * 320


def test_predict_crf_writes_maps_at_the_image_size(tmp_path, small_checkpoint):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"wide": (300, 230), "small": (180, 200)}
    for name, (width, height) in sizes.items():  # scenes: a CRF on noise takes several times longer
        Image.fromarray(make_scene(height, width, rng)[0]).save(image_dir / f"{name}.png")
    out = tmp_path / "out"
    assert (
        predict_cli.main(
            [
                "--checkpoint",
                str(small_checkpoint),
                "--input",
                str(image_dir),
                "--output-dir",
                str(out),
                "--device",
                "cpu",
                "--crf",
                "--crf-workers",
                "1",
            ]
        )
        == 0
    )
    model, _ = load_iddc_model(small_checkpoint)
    for name, (width, height) in sizes.items():
        clusters = np.array(Image.open(out / f"{name}_clusters.png"))
        assert clusters.shape == (height, width)
        expected = reference_crf_clusters(model, Image.open(image_dir / f"{name}.png").convert("RGB"))
        np.testing.assert_array_equal(clusters, expected)


def reference_crf_clusters(model, image, window=224, stride=149):
    """predict.py --crf's cluster map written from the facts alone (docs/method.md#evaluation-protocols,
    docs/evaluation.md's CRF), none of the project's functions: the image upscaled (bilinear) until
    its short side is the window, aspect kept and rounded up; flip-averaged window logits upsampled
    bilinearly to the window, softmax, averaged over the windows; STEGO's dense CRF of those
    probabilities over the un-normalised image (uint8 as to_pil_image makes it, BGR); argmax; torch's
    legacy nearest back to the image's size."""
    width, height = image.size
    short = min(width, height)
    size = (
        (width, height) if short >= window else (math.ceil(width * window / short), math.ceil(height * window / short))
    )
    pixels = TF.normalize(TF.to_tensor(image.resize(size, Image.BILINEAR)), IMAGENET_MEAN, IMAGENET_STD)  # (3, H, W)
    rows, cols = pixels.shape[1:]

    def starts(length):
        return [min(k * stride, length - window) for k in range(math.ceil((length - window) / stride + 1))]

    boxes = [(top, left) for top in starts(rows) for left in starts(cols)]
    crops = torch.stack([pixels[:, top : top + window, left : left + window] for top, left in boxes])  # (n, 3, w, w)
    with torch.no_grad():
        logits = model(torch.cat((crops, crops.flip(dims=[3]))))[2]  # (2n, K, h, w)
    plain, flipped = logits.split(len(boxes))
    averaged = (plain + flipped.flip(dims=[3])) / 2  # (n, K, h, w)
    window_probs = F.interpolate(averaged, size=(window, window), mode="bilinear", align_corners=False).softmax(dim=1)
    sums = torch.zeros(window_probs.shape[1], rows, cols)
    counts = torch.zeros(1, rows, cols)
    for (top, left), probs in zip(boxes, window_probs):
        sums[:, top : top + window, left : left + window] += probs
        counts[:, top : top + window, left : left + window] += 1
    probs = (sums / counts).numpy()  # (K, H, W)
    unnormalised = pixels * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    bgr = np.ascontiguousarray(np.array(TF.to_pil_image(unnormalised))[:, :, ::-1])  # (H, W, 3) uint8

    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    crf = dcrf.DenseCRF2D(cols, rows, probs.shape[0])
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=bgr, compat=4)
    refined = np.array(crf.inference(10)).reshape(probs.shape).argmax(axis=0)  # (H, W)
    clusters = torch.from_numpy(refined).float()[None, None]  # (1, 1, H, W)
    return F.interpolate(clusters, size=(height, width), mode="nearest")[0, 0].long().numpy()  # (H, W)
