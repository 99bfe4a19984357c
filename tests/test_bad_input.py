"""Bad and odd input through the real entry points (default options where it matters).

The contract (utils/errors.py): bad input or a bad option exits 2, a run that worked but found
problems exits 1, and either way the last line names the culprit, with no traceback; nothing the
user keeps is replaced. Odd but valid input succeeds with a correct result.

The command lines a user types run as ``python script args`` would run them, each in a process of
its own forked from the test process (tests/cli_runner.py), all of them at once in the ``runs``
fixture; variations of a class of bad input call ``main(args)`` in this process.
"""

import contextlib
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_command_lines
from helpers import save_dino, save_released, small_model, start_command_line
from PIL import Image

from data.cocostuff import SPLIT_LIST_NAME
from data.synthetic import write_synthetic_cocostuff
from utils.cli import quiet_hangups


def last_line(done):
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""


def assert_refused(done, code, *culprits):
    """Exit ``code``, no traceback anywhere, and each culprit named in the last line."""
    output = done.stdout + done.stderr
    assert done.code == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for culprit in culprits:
        assert str(culprit) in last_line(done), (culprit, last_line(done))


def call_main(main, capsys, *args):
    """``main(args)`` in this process: (exit code, last line of stderr). For variations of a class
    of bad input whose representative runs as a user types it (the ``runs`` fixture)."""
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


@pytest.fixture(scope="module")
def photos(work):
    """A folder of two photos."""
    folder = work["base"] / "photos"
    folder.mkdir(exist_ok=True)
    for image in sorted((work["root"] / "images" / "val2017").glob("*.jpg"))[:2]:
        shutil.copy(image, folder)
    return folder


def copy_root(work, name):
    target = work["base"] / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(work["root"], target)
    return target


def finished_run_in(folder, checkpoint):
    """``folder`` made to hold a run's three checkpoints and its logs."""
    folder.mkdir(parents=True)
    for name in ("best_model.pth", "last_model.pth", "resume.pth"):
        shutil.copy(checkpoint, folder / name)
    (folder / "log.jsonl").write_text('{"kind": "val"}\n')
    return folder


@pytest.fixture(scope="module")
def runs(work, photos):
    """The command lines of this module, each with its input made bad as its test says, all run at
    once: {"done": {name: Done}, "inputs": {name: paths the tests look at}, "before": {name: tree}}."""
    base, ids, inputs, before = work["base"], work["ids"], {}, {}
    eval_cpu = ["--checkpoint", work["ckpt"], "--device", "cpu"]

    root = copy_root(work, "missing_image")
    inputs["missing_image"] = root / "images" / "val2017" / f"{ids['val'][1]}.jpg"
    inputs["missing_image"].unlink()

    truncated = copy_root(work, "truncated")
    inputs["truncated"] = truncated / "images" / "val2017" / f"{ids['val'][0]}.jpg"
    inputs["truncated"].write_bytes(inputs["truncated"].read_bytes()[:400])

    duplicated = copy_root(work, "duplicated")
    inputs["duplicated"] = duplicated / "curated" / "val2017" / SPLIT_LIST_NAME
    inputs["duplicated"].write_text(inputs["duplicated"].read_text() + f"{ids['val'][0]}\n")

    inputs["a_file"] = base / "a_file"
    inputs["a_file"].write_text("mine")

    inputs["yaml"] = base / "eval.yaml"
    inputs["yaml"].write_text("protocol: slidng\n")

    inputs["finished_run"] = finished_run_in(base / "finished_run", work["ckpt"])
    before["finished_run"] = tree(inputs["finished_run"])

    keep = base / "predict_keep"
    keep.mkdir()
    inputs["users_file"] = keep / f"{sorted(photos.glob('*.jpg'))[0].stem}_color.png"
    Image.new("RGB", (8, 8), "red").save(inputs["users_file"])
    before["users_file"] = inputs["users_file"].read_bytes()

    not_images = base / "predict_in"
    not_images.mkdir()
    shutil.copy(sorted(photos.glob("*.jpg"))[0], not_images)
    (not_images / "notes.txt").write_text("shopping list")
    Image.new("RGB", (230, 230), "blue").save(not_images / "photo.tif")  # not a .jpg/.png, still an image
    inputs["not_images"] = not_images

    check = copy_root(work, "check")
    inputs["check"] = check
    inputs["check_truncated"] = check / "images" / "val2017" / f"{ids['val'][0]}.jpg"
    # Opens (the header is there), fails to decode.
    inputs["check_truncated"].write_bytes(inputs["check_truncated"].read_bytes()[:600])
    inputs["check_wrong_size"] = check / "annotations" / "val2017" / f"{ids['val'][1]}.png"
    Image.fromarray(np.zeros((100, 90), np.uint8)).save(inputs["check_wrong_size"])

    inputs["dest_folder"] = base / "dest"
    inputs["dest_folder"].mkdir()

    cases = {
        # The checkpoint is garbage: had it been loaded first, the error would name it instead.
        "missing_image": ("eval.py", ["--data-root", root, "--checkpoint", work["garbage"], "--device", "cpu"]),
        # Two loader workers, as on a GPU by default (CPU evaluation reads images in the main process).
        "truncated_workers": ("eval.py", ["--data-root", truncated, *eval_cpu, "--num-workers", "2"]),
        "truncated_default": ("eval.py", ["--data-root", truncated, *eval_cpu]),
        "nan": ("eval.py", ["--data-root", work["root"], "--checkpoint", work["nan_ckpt"], "--device", "cpu"]),
        "duplicated": ("eval.py", ["--data-root", duplicated, *eval_cpu]),
        "bad_option": ("eval.py", ["--data-root", work["root"], *eval_cpu, "--limit", "0"]),
        # The checkpoint is garbage: the output is checked before it is even read.
        "output_json": (
            "eval.py",
            ["--data-root", work["root"], "--checkpoint", work["garbage"], "--device", "cpu"]
            + ["--output-json", inputs["a_file"] / "result.json"],
        ),
        "yaml": ("eval.py", ["--config", inputs["yaml"], "--data-root", work["root"], "--checkpoint", work["ckpt"]]),
        "finished_run": ("train.py", train_flags(work, inputs["finished_run"])),
        "users_file": (
            "predict.py",
            ["--checkpoint", work["ckpt"], "--input", photos, "--output-dir", keep, "--device", "cpu"],
        ),
        "not_images": (
            "predict.py",
            ["--checkpoint", work["ckpt"], "--input", not_images, "--output-dir", base / "predict_out"]
            + ["--device", "cpu"],
        ),
        "check": ("scripts/prepare_cocostuff.py", ["--data-root", check, "--splits", "val", "--check"]),
        "dest_folder": ("scripts/download_checkpoint.py", ["vits16", "--dest", inputs["dest_folder"]]),
    }
    done = run_command_lines({name: (script, argv, ()) for name, (script, argv) in cases.items()}, timeout=300)
    return {"done": done, "inputs": inputs, "before": before}


# ---------------------------------------------------------------- eval.py


def test_eval_missing_image_found_before_the_model_is_loaded(runs):
    assert_refused(runs["done"]["missing_image"], 2, "1 of 3 images missing", runs["inputs"]["missing_image"].name)


def test_eval_unreadable_image_in_a_loader_worker_is_one_line(runs):
    broken = runs["inputs"]["truncated"]
    assert_refused(runs["done"]["truncated_workers"], 2, broken, "cannot read the image")
    assert_refused(runs["done"]["truncated_default"], 2, broken, "cannot read the image")


def test_eval_checkpoint_with_a_nan_weight(work, runs):
    assert_refused(runs["done"]["nan"], 2, work["nan_ckpt"], "classifier", "weight", "1 NaN")


def test_eval_duplicated_id_in_the_split_list(work, runs):
    assert_refused(runs["done"]["duplicated"], 2, runs["inputs"]["duplicated"], work["ids"]["val"][0])


def test_eval_bad_option(runs):
    assert_refused(runs["done"]["bad_option"], 2, "--limit", "got 0")


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


def test_eval_window_not_a_multiple_of_the_patch(work, capsys):
    import eval as eval_cli

    common = ["--data-root", work["root"], "--checkpoint", work["ckpt"], "--device", "cpu", "--overlap", "0"]
    for window in ("100", "4"):
        code, line = call_main(eval_cli.main, capsys, *common, "--window", window)
        assert code == 2 and f"--window {window}" in line and "multiple of the checkpoint's ViT patch" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_eval_cuda_without_a_gpu(work, capsys):
    import eval as eval_cli

    code, line = call_main(
        eval_cli.main, capsys, "--data-root", work["root"], "--checkpoint", work["ckpt"], "--device", "cuda"
    )
    assert code == 2 and "--device cuda" in line and "no CUDA GPU" in line


def test_eval_outputs_proven_writable_before_the_work(work, runs, capsys):
    import eval as eval_cli

    a_file = runs["inputs"]["a_file"]
    common = ["--data-root", work["root"], "--checkpoint", work["garbage"], "--device", "cpu"]
    assert_refused(runs["done"]["output_json"], 2, "--output-json", a_file)
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


INTERRUPTED_IMAGES = 8


@pytest.fixture(scope="module")
def interrupted_root(work):
    root = work["base"] / "interrupted"
    write_synthetic_cocostuff(root, num_train=0, num_val=INTERRUPTED_IMAGES, sizes=((240, 240),))
    return root


def stopped_when_shown(pid, err_path, sign, timeout=120):
    """Wait until ``err_path`` shows ``sign``, then stop the process group of ``pid`` (SIGSTOP) and
    wait until ``pid`` is stopped: from then on nothing of the command runs on by itself. The
    stderr it wrote up to the stop."""
    deadline = time.monotonic() + timeout
    while sign not in err_path.read_text(errors="replace"):
        ended, _ = os.waitpid(pid, os.WNOHANG)
        assert not ended, f"ended before showing {sign!r}:\n{err_path.read_text(errors='replace')[-2000:]}"
        assert time.monotonic() < deadline, f"{sign!r} not shown in {timeout} s"
        time.sleep(0.01)
    os.killpg(pid, signal.SIGSTOP)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"ended before the test could stop it:\n{err_path.read_text()[-2000:]}"
    return err_path.read_text(errors="replace")


@pytest.mark.parametrize(
    "sign",
    ["eval sliding", f" 1/{INTERRUPTED_IMAGES} ["],
    ids=["as-the-loader-starts", "while-the-loop-runs"],
)
def test_eval_interrupted_with_ctrl_c(work, interrupted_root, tmp_path, sign):
    """Ctrl-C reaches the whole process group (loader workers too): one line, exit 130.

    Pressed as soon as the progress bar shows (while the loader's workers are forked) and once the
    first image is scored (the workers are running). The group is stopped when the sign shows and
    sent SIGINT before it goes on, so that a test process slowed down by a busy machine cannot
    press it too late, after the evaluation ended.
    """
    argv = ["--data-root", interrupted_root, "--checkpoint", work["ckpt"], "--device", "cpu", "--num-workers", "2"]
    err = tmp_path / "eval.err"
    pid = start_command_line("eval.py", argv, tmp_path / "eval.out", err)
    try:
        shown = stopped_when_shown(pid, err, sign)
        scored = [int(count) for count in re.findall(rf"(\d+)/{INTERRUPTED_IMAGES} \[", shown)]
        assert max(scored, default=0) < INTERRUPTED_IMAGES, shown[-2000:]  # stopped before the end
        os.killpg(pid, signal.SIGINT)
        os.killpg(pid, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while True:
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                break
            assert time.monotonic() < deadline, "still running 60 s after Ctrl-C"
            time.sleep(0.02)
    except BaseException:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):  # already ended
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise
    output = err.read_text(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 130, output[-3000:]
    assert "Traceback" not in output
    assert output.strip().splitlines()[-1] == "error: interrupted by Ctrl-C (SIGINT) before the end"


def test_a_workers_echo_of_an_interrupted_hand_over_is_quiet(monkeypatch, capsys):
    """What evaluation's loader workers do with the traceback of a connection the interrupted main
    process reset (test_eval_interrupted_with_ctrl_c meets it about one time in ten)."""
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    quiet_hangups(0)
    for error in (ConnectionResetError(104, "Connection reset by peer"), EOFError()):
        sys.excepthook(type(error), error, None)
    assert capsys.readouterr().err == ""
    sys.excepthook(ValueError, ValueError("a real problem"), None)
    assert "ValueError: a real problem" in capsys.readouterr().err


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


def test_eval_protocol_typo_in_a_yaml_config(runs):
    done = runs["done"]["yaml"]
    assert done.code == 2 and "Traceback" not in done.stderr
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
    return finished_run_in(tmp_path / "run", work["ckpt"])


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


def test_train_refuses_a_finished_run_and_leaves_it_untouched(runs):
    finished_run = runs["inputs"]["finished_run"]
    done = runs["done"]["finished_run"]
    assert_refused(done, 2, f"--output-dir {finished_run}", "best_model.pth", "--resume", "--overwrite")
    # Nothing replaced, nothing added (no train.log, no config.yaml).
    assert tree(finished_run) == runs["before"]["finished_run"]


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


def test_predict_keeps_a_users_file_with_an_output_name(runs):
    users_file = runs["inputs"]["users_file"]
    assert_refused(runs["done"]["users_file"], 2, users_file, "predict.py did not write")
    assert users_file.read_bytes() == runs["before"]["users_file"]
    assert sorted(p.name for p in users_file.parent.iterdir()) == [users_file.name]


def test_predict_folder_with_a_file_that_is_not_an_image(work, runs):
    folder, done, out = runs["inputs"]["not_images"], runs["done"]["not_images"], work["base"] / "predict_out"
    assert done.code == 0, done.stderr[-3000:]  # listed as skipped, not a failure
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
    from engine.segment import segment

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


def test_check_opens_every_file(work, runs):
    root, done, val = runs["inputs"]["check"], runs["done"]["check"], work["ids"]["val"]
    truncated, wrong_size = runs["inputs"]["check_truncated"], runs["inputs"]["check_wrong_size"]
    assert_refused(done, 1, f"--data-root {root}")
    report = done.stdout
    assert f"{val[0]} (unreadable" in report and str(truncated) in report
    assert f"{val[1]} (label is 90x100 but its image is" in report and str(wrong_size) in report
    assert "FAILED" in report


def test_download_checkpoint_to_a_folder(runs):
    assert_refused(runs["done"]["dest_folder"], 2, "--dest", runs["inputs"]["dest_folder"], "is a folder")
