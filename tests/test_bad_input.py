"""Bad and odd input through the real entry points (subprocesses, default options where it matters).

The contract (utils/errors.py): bad input or a bad option exits 2, a run that worked but found
problems exits 1, and either way the last line names the culprit, with no traceback; nothing the
user keeps is replaced. Odd but valid input succeeds with a correct result.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_dino, save_released, small_model
from PIL import Image

from data.cocostuff import SPLIT_LIST_NAME
from data.synthetic import write_synthetic_cocostuff

ROOT = Path(__file__).resolve().parents[1]


def run_entry(script, *args, cwd=None, timeout=180):
    """``python script args`` as a user runs it, from another folder."""
    env = dict(os.environ, OMP_NUM_THREADS="2")
    env.pop("IDDC_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def last_line(done):
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def assert_refused(done, code, *culprits):
    """Exit ``code``, no traceback anywhere, and each culprit named in the last line."""
    output = done.stdout + done.stderr
    assert done.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for culprit in culprits:
        assert str(culprit) in last_line(done), (culprit, last_line(done))


def call_main(main, capsys, *args):
    """``main(args)`` in this process: (exit code, last line of stderr). For variations of a class
    of bad input whose representative runs as a subprocess (each subprocess imports torch anew)."""
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    err = capsys.readouterr().err.strip()
    return code, err.splitlines()[-1] if err else ""


def tree(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One small data root, a checkpoint, a DINO file and a garbage 'checkpoint' shared by the module."""
    base = tmp_path_factory.mktemp("bad_input")
    ids = write_synthetic_cocostuff(base / "root", num_train=4, num_val=3, sizes=((256, 240), (240, 240)))
    model = small_model()
    checkpoint = save_released(model, base / "small.pth")
    with torch.no_grad():
        model.classifier.weight[3, 5] = float("nan")
    nan_checkpoint = save_released(model, base / "nan.pth")
    dino = save_dino(small_model(seed=3), base / "dino.pth")
    garbage = base / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    return {
        "base": base,
        "root": base / "root",
        "ids": ids,
        "ckpt": checkpoint,
        "nan_ckpt": nan_checkpoint,
        "dino": dino,
        "garbage": garbage,
    }


def copy_root(work, name):
    target = work["base"] / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(work["root"], target)
    return target


# ---------------------------------------------------------------- eval.py


def test_eval_missing_image_found_before_the_model_is_loaded(work):
    root = copy_root(work, "missing_image")
    missing = root / "images" / "val2017" / f"{work['ids']['val'][1]}.jpg"
    missing.unlink()
    # The checkpoint is garbage: had it been loaded first, the error would name it instead.
    done = run_entry("eval.py", "--data-root", root, "--checkpoint", work["garbage"], "--device", "cpu")
    assert_refused(done, 2, "1 of 3 images missing", missing.name)


def test_eval_unreadable_image_in_a_loader_worker_is_one_line(work):
    root = copy_root(work, "truncated")
    broken = root / "images" / "val2017" / f"{work['ids']['val'][0]}.jpg"
    broken.write_bytes(broken.read_bytes()[:400])
    # Two loader workers, as on a GPU by default (CPU evaluation reads images in the main process).
    done = run_entry(
        "eval.py", "--data-root", root, "--checkpoint", work["ckpt"], "--device", "cpu", "--num-workers", "2"
    )
    assert_refused(done, 2, broken, "cannot read the image")
    done = run_entry("eval.py", "--data-root", root, "--checkpoint", work["ckpt"], "--device", "cpu")  # the default
    assert_refused(done, 2, broken, "cannot read the image")


def test_eval_checkpoint_with_a_nan_weight(work):
    done = run_entry("eval.py", "--data-root", work["root"], "--checkpoint", work["nan_ckpt"], "--device", "cpu")
    assert_refused(done, 2, work["nan_ckpt"], "classifier", "weight", "1 NaN")


def test_eval_duplicated_id_in_the_split_list(work):
    root = copy_root(work, "duplicated")
    split_list = root / "curated" / "val2017" / SPLIT_LIST_NAME
    split_list.write_text(split_list.read_text() + f"{work['ids']['val'][0]}\n")
    done = run_entry("eval.py", "--data-root", root, "--checkpoint", work["ckpt"], "--device", "cpu")
    assert_refused(done, 2, split_list, work["ids"]["val"][0])


def test_eval_bad_option(work):
    done = run_entry(
        "eval.py", "--data-root", work["root"], "--checkpoint", work["ckpt"], "--device", "cpu", "--limit", "0"
    )
    assert_refused(done, 2, "--limit", "got 0")


@pytest.mark.parametrize(
    "flags",
    [
        ["--limit", "-1"],
        ["--batch-size", "-4"],
        ["--overlap", "224"],
        ["--num-workers", "-1"],
        ["--score-size", "0", "320"],
    ],
    ids=["limit-1", "negative-batch", "overlap-as-window", "negative-workers", "score-size0"],
)
def test_eval_more_bad_options(work, capsys, flags):
    import eval as eval_cli

    code, line = call_main(
        eval_cli.main, capsys, "--data-root", work["root"], "--checkpoint", work["garbage"], "--device", "cpu", *flags
    )
    assert code == 2 and flags[0] in line and flags[1] in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_eval_cuda_without_a_gpu(work, capsys):
    import eval as eval_cli

    code, line = call_main(
        eval_cli.main, capsys, "--data-root", work["root"], "--checkpoint", work["ckpt"], "--device", "cuda"
    )
    assert code == 2 and "--device cuda" in line and "no CUDA GPU" in line


def test_eval_outputs_proven_writable_before_the_work(work, tmp_path, capsys):
    import eval as eval_cli

    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    # The checkpoint is garbage: the output is checked before it is even read.
    common = ["--data-root", work["root"], "--checkpoint", work["garbage"], "--device", "cpu"]
    done = run_entry("eval.py", *common, "--output-json", a_file / "result.json")
    assert_refused(done, 2, "--output-json", a_file)
    code, line = call_main(eval_cli.main, capsys, *common, "--save-visuals", a_file)
    assert code == 2 and "--save-visuals" in line and str(a_file) in line and "not a folder" in line
    assert a_file.read_text() == "mine"


def test_eval_pictures_never_go_among_the_labels(work, capsys):
    import eval as eval_cli

    labels = work["root"] / "annotations" / "val2017"
    before = tree(labels)
    code, line = call_main(
        eval_cli.main,
        capsys,
        "--data-root",
        work["root"],
        "--checkpoint",
        work["ckpt"],
        "--device",
        "cpu",
        "--save-visuals",
        labels,
    )
    assert code == 2 and "--save-visuals" in line and "annotations" in line
    assert tree(labels) == before


def test_eval_interrupted_with_ctrl_c(work, tmp_path):
    """Ctrl-C reaches the whole process group (loader workers too): one line, exit 130."""
    import signal

    write_synthetic_cocostuff(tmp_path, num_train=0, num_val=40, sizes=((240, 240),))  # long enough to interrupt
    command = [
        sys.executable,
        str(ROOT / "eval.py"),
        "--data-root",
        str(tmp_path),
        "--checkpoint",
        str(work["ckpt"]),
        "--device",
        "cpu",
        "--num-workers",
        "2",
    ]
    child = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
        # A shell starts background jobs with SIGINT ignored, and a child inherits that: Ctrl-C as a
        # terminal delivers it needs the default disposition, which Python turns into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = b""
    while b"eval sliding" not in seen:  # the evaluation (and its loader workers) has started
        chunk = child.stderr.read1(4096)
        assert chunk, seen.decode()[-2000:]
        seen += chunk
    os.killpg(child.pid, signal.SIGINT)
    rest = child.stderr.read().decode()
    assert child.wait(timeout=60) == 130
    assert "Traceback" not in seen.decode() + rest
    assert rest.strip().splitlines()[-1] == "error: interrupted by Ctrl-C (SIGINT) before the end"


def test_eval_never_writes_over_its_checkpoint(work, tmp_path, capsys):
    import eval as eval_cli

    checkpoint = shutil.copy(work["ckpt"], tmp_path / "model.json")
    before = Path(checkpoint).read_bytes()
    code, line = call_main(
        eval_cli.main,
        capsys,
        "--data-root",
        work["root"],
        "--checkpoint",
        checkpoint,
        "--device",
        "cpu",
        "--output-json",
        checkpoint,
    )
    assert code == 2 and "--output-json" in line and "input of this run" in line
    assert Path(checkpoint).read_bytes() == before


def test_eval_protocol_typo_in_a_yaml_config(work, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text("protocol: slidng\n")
    done = run_entry("eval.py", "--config", config, "--data-root", work["root"], "--checkpoint", work["ckpt"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "protocol" in last_line(done) and "'slidng' is not one of" in last_line(done)


def test_eval_labels_without_a_labelled_pixel(work, capsys):
    import eval as eval_cli

    root = copy_root(work, "unlabelled")
    for label in (root / "annotations" / "val2017").glob("*.png"):
        Image.fromarray(np.full(Image.open(label).size[::-1], 255, np.uint8)).save(label)
    code, line = call_main(
        eval_cli.main,
        capsys,
        "--data-root",
        root,
        "--checkpoint",
        work["ckpt"],
        "--device",
        "cpu",
        "--limit",
        "1",
        "--protocol",
        "resize320",
        "--num-workers",
        "0",
    )
    assert code == 2 and "no labelled pixel" in line  # instead of NaN metrics


def test_debug_shows_the_traceback(work):
    import eval as eval_cli
    from modules.weights import CheckpointError

    with pytest.raises(CheckpointError):
        eval_cli.main(
            ["--data-root", str(work["root"]), "--checkpoint", str(work["garbage"]), "--device", "cpu", "--debug"]
        )


# ---------------------------------------------------------------- train.py


@pytest.fixture
def finished_run(work, tmp_path):
    """A folder holding a run's three checkpoints and its logs."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best_model.pth", "last_model.pth", "resume.pth"):
        shutil.copy(work["ckpt"], run / name)
    (run / "log.jsonl").write_text('{"kind": "val"}\n')
    return run


def train_flags(work, output_dir, *extra):
    return [
        "--data-root",
        work["root"],
        "--backbone-weights",
        work["dino"],
        "--output-dir",
        output_dir,
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        *extra,
    ]


def test_train_refuses_a_finished_run_and_leaves_it_untouched(work, finished_run):
    before = tree(finished_run)
    done = run_entry("train.py", *train_flags(work, finished_run))
    assert_refused(done, 2, f"--output-dir {finished_run}", "best_model.pth", "--resume", "--overwrite")
    assert tree(finished_run) == before  # nothing replaced, nothing added (no train.log, no config.yaml)


def test_train_resume_without_a_resume_file(work, tmp_path, capsys):
    import train as train_cli

    code, line = call_main(train_cli.main, capsys, *train_flags(work, tmp_path / "new", "--resume"))
    assert code == 2 and "--resume" in line and "resume.pth not found" in line


def test_train_missing_validation_split_found_before_training(work, tmp_path, capsys):
    import train as train_cli

    root = copy_root(work, "no_val")
    shutil.rmtree(root / "images" / "val2017")
    out = tmp_path / "run"
    code, line = call_main(train_cli.main, capsys, *train_flags(work, out)[2:], "--data-root", root)
    assert code == 2 and "images/val2017" in line
    assert not list(out.glob("*")) and "epoch" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags",
    [
        ["--val-limit", "0"],
        ["--epochs", "0"],
        ["--lr", "nan"],
        ["--batch-size", "3", "--train-limit", "2"],
    ],
    ids=["val-limit0", "epochs0", "lr-nan", "batch-over-split"],
)
def test_train_bad_options(work, tmp_path, capsys, flags):
    import train as train_cli

    code, line = call_main(train_cli.main, capsys, *train_flags(work, tmp_path / "run"), *flags)
    assert code == 2 and flags[0] in line
    assert not (tmp_path / "run" / "train.log").exists()


def test_train_overwrite_never_deletes_an_input(work, finished_run, capsys):
    import train as train_cli

    weights = shutil.copy(work["dino"], finished_run / "last_model.pth")  # the run's folder holds the backbone given
    before = tree(finished_run)
    code, line = call_main(
        train_cli.main,
        capsys,
        "--data-root",
        work["root"],
        "--backbone-weights",
        weights,
        "--output-dir",
        finished_run,
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--overwrite",
    )
    assert code == 2 and "--backbone-weights" in line and "last_model.pth" in line
    assert tree(finished_run) == before


def test_train_overwrite_replaces_the_run(work, finished_run):
    import train as train_cli

    old_best = (finished_run / "best_model.pth").read_bytes()
    code = train_cli.main(
        [
            str(arg)
            for arg in train_flags(
                work, finished_run, "--overwrite", "--num-workers", "0", "--train-limit", "2", "--val-limit", "1"
            )
        ]
    )
    assert code == 0
    assert (finished_run / "best_model.pth").read_bytes() != old_best
    assert '"kind": "val"}' not in (finished_run / "log.jsonl").read_text().splitlines()[0]  # a fresh log
    umask = os.umask(0)
    os.umask(umask)
    for name in ("best_model.pth", "resume.pth", "config.yaml"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~umask  # the user's permissions, not 0600


# ---------------------------------------------------------------- predict.py


@pytest.fixture(scope="module")
def photos(work):
    """A folder of two photos."""
    folder = work["base"] / "photos"
    folder.mkdir(exist_ok=True)
    for image in sorted((work["root"] / "images" / "val2017").glob("*.jpg"))[:2]:
        shutil.copy(image, folder)
    return folder


def test_predict_keeps_a_users_file_with_an_output_name(work, photos, tmp_path):
    stem = sorted(photos.glob("*.jpg"))[0].stem
    users_file = tmp_path / f"{stem}_color.png"
    Image.new("RGB", (8, 8), "red").save(users_file)
    before = users_file.read_bytes()
    done = run_entry(
        "predict.py", "--checkpoint", work["ckpt"], "--input", photos, "--output-dir", tmp_path, "--device", "cpu"
    )
    assert_refused(done, 2, users_file, "predict.py did not write")
    assert users_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [users_file.name]


def test_predict_folder_with_a_file_that_is_not_an_image(work, photos, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(sorted(photos.glob("*.jpg"))[0], folder)
    (folder / "notes.txt").write_text("shopping list")
    Image.new("RGB", (230, 230), "blue").save(folder / "photo.tif")  # not a .jpg/.png, still an image
    out = tmp_path / "out"
    done = run_entry(
        "predict.py", "--checkpoint", work["ckpt"], "--input", folder, "--output-dir", out, "--device", "cpu"
    )
    assert done.returncode == 0, done.stderr[-3000:]  # listed as skipped, not a failure
    assert f"skipped: {folder / 'notes.txt'}: not an image by its extension" in done.stdout
    assert len(list(out.glob("*_clusters.png"))) == 2 and (out / "photo_overlay.png").is_file()


def test_predict_output_dir_that_is_a_file(work, photos, tmp_path, capsys):
    import predict as predict_cli

    a_file = tmp_path / "out.png"
    a_file.write_bytes(b"mine")
    code, line = call_main(
        predict_cli.main,
        capsys,
        "--checkpoint",
        work["ckpt"],
        "--input",
        photos,
        "--output-dir",
        a_file,
        "--device",
        "cpu",
    )
    assert code == 2 and "--output-dir" in line and str(a_file) in line
    assert a_file.read_bytes() == b"mine"


def test_predict_again_into_its_input_folder(work, photos, tmp_path):
    import predict as predict_cli

    folder = tmp_path / "in_and_out"
    shutil.copytree(photos, folder)
    args = [
        "--checkpoint",
        str(work["ckpt"]),
        "--input",
        str(folder),
        "--output-dir",
        str(folder),
        "--device",
        "cpu",
        "--no-flip",
    ]
    assert predict_cli.main(args) == 0
    first = tree(folder)
    assert predict_cli.main(args) == 0  # its own PNGs are neither inputs nor protected files
    assert tree(folder) == first


def test_predict_reads_photos_upright_and_16_bit(work, tmp_path):
    from data.photos import open_photo
    from predict import segment

    model = small_model()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # the sensor image is landscape; the camera was held upright: rotate 90 clockwise
    Image.fromarray(pixels).save(tmp_path / "portrait.png", exif=exif)
    photo = open_photo(tmp_path / "portrait.png")
    assert photo.size == (240, 320)
    np.testing.assert_array_equal(np.array(photo), np.rot90(pixels, k=-1))
    upright = Image.fromarray(np.ascontiguousarray(np.rot90(pixels, k=-1)))
    np.testing.assert_array_equal(segment(model, photo, "cpu", flip=False), segment(model, upright, "cpu", flip=False))

    grey = rng.integers(0, 65536, size=(230, 250), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    shown = np.array(open_photo(tmp_path / "grey16.png"))
    np.testing.assert_array_equal(shown[..., 0], np.rint(grey / 257).astype(np.uint8))
    assert (shown == 255).mean() < 0.01  # not clipped to white


# ---------------------------------------------------------------- scripts


def test_check_opens_every_file(work):
    root = copy_root(work, "check")
    val = work["ids"]["val"]
    truncated = root / "images" / "val2017" / f"{val[0]}.jpg"
    truncated.write_bytes(truncated.read_bytes()[:600])  # opens (the header is there), fails to decode
    wrong_size = root / "annotations" / "val2017" / f"{val[1]}.png"
    Image.fromarray(np.zeros((100, 90), np.uint8)).save(wrong_size)
    done = run_entry("scripts/prepare_cocostuff.py", "--data-root", root, "--splits", "val", "--check")
    assert_refused(done, 1, f"--data-root {root}")
    report = done.stdout
    assert f"{val[0]} (unreadable" in report and str(truncated) in report
    assert f"{val[1]} (label is 90x100 but its image is" in report and str(wrong_size) in report
    assert "FAILED" in report


def test_download_checkpoint_to_a_folder(tmp_path):
    done = run_entry("scripts/download_checkpoint.py", "vits16", "--dest", tmp_path)
    assert_refused(done, 2, "--dest", tmp_path, "is a folder")
