"""One command-line contract for every command a user runs (utils/errors.py, utils/cli.py).

Every entry point (train, eval, predict, demo, app, baseline_kmeans, the scripts and the benchmarks) is
run with (a) an abbreviation of one of its long options and ``--deb``, (b) a bad value for one
option and (c) an output it cannot write: exit 2, no traceback, and a last stderr line that starts
with ``error:`` and names the culprit. All of them must fail before a model is built or data is
read. The command lines run in processes forked from one interpreter that imported torch once
(tests/cli_runner.py), in parallel, so that the whole file takes seconds, not minutes.

Also here: a refused ``train.py --resume`` changes no file of the run; a missing optional package
is one line with the pip command of requirements.txt; predict.py's rule for files that are not
images; SIGTERM's exit code 143; hubconf.py's errors.
"""

import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runner import run_command_lines
from helpers import save_released, small_model
from PIL import Image

from data.synthetic import write_synthetic_cocostuff
from utils.cli import entry_point
from utils.errors import EXIT_TERMINATED, ReportedError

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(path.stem for path in (ROOT / "benchmarks").glob("bench_*.py"))


class Case:
    """One command line and what its refusal must name."""

    def __init__(self, script, kind, argv, *culprits, code=2, block=()):
        self.script, self.kind, self.argv, self.culprits = script, kind, argv, culprits
        self.code, self.block = code, block
        self.id = f"{Path(script).stem}-{kind}"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs the command lines refer to; none of them is read before the refusals."""
    base = tmp_path_factory.mktemp("cli_contract")
    root = base / "root"
    write_synthetic_cocostuff(root, num_train=2, num_val=1, sizes=((64, 48),))
    a_file = base / "a_file"  # a file where a folder is expected: unwritable, also for root
    a_file.write_text("mine")
    photo = base / "photo.png"
    Image.new("RGB", (40, 30), "green").save(photo)
    eval_json = base / "eval.json"
    eval_json.write_text("{}")
    run = base / "corrupt_run"  # a run whose resume.pth is damaged
    run.mkdir()
    for name, text in (
        ("config.yaml", "epochs: 2\n"),
        ("log.jsonl", '{"kind": "val", "step": 4}\n'),
        ("train.log", ""),
    ):
        (run / name).write_text(text)
    (run / "resume.pth").write_bytes(b"\x80\x02 half a pickle")
    save_released(small_model(depth=1), run / "last_model.pth")
    foreign_run = base / "foreign_run"  # a resume.pth that loads but was not written by train.py
    foreign_run.mkdir()
    (foreign_run / "config.yaml").write_text("epochs: 2\n")
    save_released(small_model(depth=1), foreign_run / "resume.pth")
    return {
        "base": base,
        "root": root,
        "a_file": a_file,
        "photo": photo,
        "missing": base / "missing.pth",
        "eval_json": eval_json,
        "run": run,
        "foreign_run": foreign_run,
    }


def build_cases(f):
    root, a_file, missing, photo = str(f["root"]), f["a_file"], str(f["missing"]), str(f["photo"])
    cpu = ["--device", "cpu"]
    unwritable = a_file / "sub"
    closed_port = "http://127.0.0.1:9"  # nothing listens: a download attempt fails at once
    # What each command needs to get past its required arguments, and an abbreviation of one of
    # its long options with a value.
    commands = {
        "train.py": (["--data-root", root, "--batch-size", "2", *cpu], ["--check", "100"]),  # --checkpoint-every
        "eval.py": (["--data-root", root, "--checkpoint", missing, *cpu], ["--output", "r.json"]),
        "predict.py": (
            ["--checkpoint", missing, "--input", photo, "--output-dir", str(f["base"] / "p"), *cpu],
            ["--check", missing],
        ),
        "demo.py": ([], ["--backbone", "dino_vits8"]),  # not --backbone-weights
        "app.py": (["--checkpoint", str(a_file), *cpu], ["--por", "7860"]),  # not --port
        "baseline_kmeans.py": (["--data-root", root, *cpu], ["--save", "c.pth"]),
        "scripts/summarize.py": ([str(f["eval_json"])], ["--mark", "t.md"]),
        "scripts/gallery.py": (
            ["--checkpoint", missing, "--input", photo, "--output-dir", str(f["base"] / "g"), *cpu],
            ["--per", "2"],  # --per-cluster
        ),
        "scripts/download_checkpoint.py": (["vits16"], ["--pro", closed_port]),
        "scripts/prepare_data.py": (["cocostuff27", "--data-root", root, "--check"], ["--check-lim", "1"]),
        "scripts/prepare_cocostuff.py": (["--data-root", root, "--check"], ["--check-lim", "1"]),
        **{
            f"benchmarks/{name}.py": ([], ["--wid" if name == "bench_predict_memory" else "--rep", "1"])
            for name in BENCHMARKS
        },
    }
    cases = []
    for script, (base, prefix) in commands.items():
        cases.append(Case(script, "prefix", [*base, *prefix], prefix[0]))
        cases.append(Case(script, "deb", [*base, "--deb"], "--deb"))
    base = {script: args for script, (args, _) in commands.items()}
    cases += [
        Case("train.py", "bad-value", [*base["train.py"], "--epochs", "0"], "--epochs", "got 0"),
        Case(
            "train.py", "unwritable", [*base["train.py"], "--output-dir", str(unwritable)], "--output-dir", str(a_file)
        ),
        Case("eval.py", "bad-value", [*base["eval.py"], "--limit", "0"], "--limit", "got 0"),
        Case("app.py", "bad-value", [*base["app.py"], "--max-models", "0"], "--max-models", "got 0"),
        Case("app.py", "missing-checkpoint", ["--checkpoint", missing], "--checkpoint", missing),
        Case("eval.py", "unwritable", [*base["eval.py"], "--output-json", str(unwritable / "r.json")], "--output-json"),
        Case("eval.py", "unwritable-visuals", [*base["eval.py"], "--save-visuals", str(a_file)], "--save-visuals"),
        Case("predict.py", "bad-value", [*base["predict.py"], "--batch-size", "0"], "--batch-size", "got 0"),
        Case(
            "predict.py",
            "unwritable",
            [*base["predict.py"], "--output-dir", str(unwritable)],
            "--output-dir",
            str(a_file),
        ),
        Case("demo.py", "bad-value", ["--epochs", "0", *cpu], "--epochs", "got 0"),
        Case("demo.py", "unwritable", ["--output-dir", str(unwritable), *cpu], "--output-dir", str(a_file)),
        Case("baseline_kmeans.py", "bad-value", [*base["baseline_kmeans.py"], "--num-samples", "0"], "--num-samples"),
        Case(
            "baseline_kmeans.py",
            "unwritable",
            [*base["baseline_kmeans.py"], "--output-json", str(unwritable / "k.json")],
            "--output-json",
        ),
        Case(
            "baseline_kmeans.py",
            "unwritable-centroids",
            [*base["baseline_kmeans.py"], "--save-centroids", str(unwritable / "c.pth")],
            "--save-centroids",
        ),
        Case("scripts/summarize.py", "bad-value", [str(f["base"] / "nowhere.json")], "nowhere.json"),
        Case("scripts/summarize.py", "unwritable", [str(f["eval_json"]), "--csv", str(unwritable / "t.csv")], "--csv"),
        Case(
            "scripts/summarize.py",
            "unwritable-markdown",
            [str(f["eval_json"]), "--markdown", str(f["eval_json"])],  # its own input
            "--markdown",
            "input of this run",
        ),
        Case("scripts/gallery.py", "bad-value", [*base["scripts/gallery.py"], "--sample", "0"], "--sample", "got 0"),
        Case(
            "scripts/gallery.py",
            "unwritable",
            [*base["scripts/gallery.py"], "--output-dir", str(unwritable)],
            "--output-dir",
            str(a_file),
        ),
        Case("scripts/download_checkpoint.py", "bad-value", ["vits32"], "vits32"),
        Case("scripts/download_checkpoint.py", "unwritable", ["vits16", "--dest", str(unwritable / "x.pth")], "--dest"),
    ]
    for script in ("scripts/prepare_data.py", "scripts/prepare_cocostuff.py"):
        dataset = ["cocostuff27"] if script.endswith("prepare_data.py") else []
        cases += [
            Case(script, "bad-value", [*dataset, "--data-root", root, "--check-limit", "0"], "--check-limit"),
            Case(
                script,
                "unwritable",
                [*dataset, "--data-root", str(unwritable), "--splits", "val", "--base-url", closed_port],
                "--data-root",
                str(a_file),
            ),
        ]
    # The benchmarks write no file (they print their measurements and remove their temporary
    # data): no unwritable-output case.
    for name in BENCHMARKS:
        option = "--width" if name == "bench_predict_memory" else "--repeats"
        cases.append(Case(f"benchmarks/{name}.py", "bad-value", [option, "many"], option, "'many'"))
    # A missing optional package: one line with the pip command, before anything is written.
    cases += [
        Case("eval.py", "no-pydensecrf", [*base["eval.py"], "--crf"], "--crf", "pydensecrf2", block=["pydensecrf"]),
        Case(
            "predict.py",
            "no-pydensecrf",
            [*base["predict.py"], "--crf"],
            "pydensecrf2",
            block=["pydensecrf"],
        ),
        Case("baseline_kmeans.py", "no-faiss", base["baseline_kmeans.py"], "faiss-cpu", block=["faiss"]),
        Case("app.py", "no-gradio", base["app.py"], "gradio", block=["gradio"]),
        Case(
            "train.py",
            "no-tensorboard",
            [*base["train.py"], "--output-dir", str(f["base"] / "tb_run")],
            "tensorboard",
            block=["tensorboard"],
        ),
        Case(
            "scripts/download_checkpoint.py",
            "no-gdown",
            ["vits16", "--dest", str(f["base"] / "x.pth")],
            "gdown",
            block=["gdown"],
        ),
    ]
    # A refused --resume leaves the run as it was.
    cases += [
        Case(
            "train.py", "corrupt-resume", [*base["train.py"], "--output-dir", str(f["run"]), "--resume"], "resume.pth"
        ),
        Case(
            "train.py",
            "foreign-resume",
            [*base["train.py"], "--output-dir", str(f["foreign_run"]), "--resume"],
            "resume.pth",
            "not a resume file",
        ),
    ]
    # --debug shows the traceback (exit 1: the exception propagates, as Python reports it).
    cases += [Case("scripts/summarize.py", "debug", [str(f["base"] / "nowhere.json"), "--debug"], code=1)]
    return cases


def case_params():
    """The cases as pytest parameters; built from placeholder paths, only for their ids."""
    placeholder = {key: Path("/placeholder") / key for key in ("base", "root", "a_file", "photo", "missing")}
    placeholder.update(eval_json=Path("/e.json"), run=Path("/r"), foreign_run=Path("/f"))
    return [pytest.param(case.id, id=case.id) for case in build_cases(placeholder)]


def tree(folder):
    """{name: (bytes, mtime_ns)} of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(Path(folder).rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def results(files):
    """Every case run once, in parallel: {id: (case, Done)}; with the run folders before and after."""
    cases = build_cases(files)
    before = {name: tree(files[name]) for name in ("run", "foreign_run")}
    start = time.perf_counter()
    done = run_command_lines({case.id: (case.script, case.argv, case.block) for case in cases})
    print(f"{len(cases)} command lines in {time.perf_counter() - start:.1f} s")
    after = {name: tree(files[name]) for name in ("run", "foreign_run")}
    return {"cases": {case.id: (case, done[case.id]) for case in cases}, "before": before, "after": after}


def requirement(name):
    """requirements.txt's line for the package ``name`` (e.g. 'pydensecrf2==1.1')."""
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if re.match(rf"{re.escape(name)}\s*([=<>!~]|$)", line):
            return line
    raise AssertionError(f"{name} is not in requirements.txt")


@pytest.mark.parametrize("case_id", case_params())
def test_refused_with_one_error_line(results, case_id):
    case, result = results["cases"][case_id]
    stderr = result.stderr.strip()
    last = stderr.splitlines()[-1] if stderr else ""
    shown = f"{case.script} {shlex.join(map(str, case.argv))}\nexit {result.code}\n{stderr[-2000:]}"
    assert result.code == case.code, shown
    if case.code == 1:  # --debug
        assert "Traceback" in stderr, shown
        return
    assert "Traceback" not in stderr + result.stdout, shown
    assert last.startswith("error: "), shown
    for culprit in case.culprits:
        assert str(culprit) in last, (culprit, shown)


@pytest.mark.parametrize("package", ["pydensecrf2", "faiss-cpu", "tensorboard", "gdown", "gradio"])
def test_missing_package_names_the_install_command_of_requirements(results, package):
    case_id = {
        "pydensecrf2": "eval-no-pydensecrf",
        "faiss-cpu": "baseline_kmeans-no-faiss",
        "tensorboard": "train-no-tensorboard",
        "gdown": "download_checkpoint-no-gdown",
        "gradio": "app-no-gradio",
    }[package]
    _, result = results["cases"][case_id]
    last = result.stderr.strip().splitlines()[-1]
    assert f"install it with: pip install {shlex.quote(requirement(package))}" in last
    assert "a bug of iddc" not in result.stderr


def test_refused_resume_changes_nothing(results, files):
    for name in ("run", "foreign_run"):
        assert results["after"][name] == results["before"][name], name
    assert not (files["base"] / "tb_run").exists()  # refused for a missing tensorboard: no folder made


def test_sigterm_is_one_line_and_143(capsys):
    @entry_point
    def main(argv=None):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises long before
        return 0

    assert main([]) == EXIT_TERMINATED
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: terminated by SIGTERM before the end"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


# ---------------------------------------------------------------- predict.py: what is an image


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_released(small_model(depth=1), tmp_path_factory.mktemp("tiny") / "tiny.pth")


def predict(checkpoint, folder, out):
    import predict as predict_cli

    flags = ["--window", "32", "--overlap", "0", "--no-flip", "--device", "cpu"]
    return predict_cli.main(["--checkpoint", str(checkpoint), "--input", str(folder), "--output-dir", str(out), *flags])


def test_predict_skips_files_that_are_not_images_by_their_extension(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 30), "green").save(folder / "photo.png")
    (folder / "notes.txt").write_text("shopping list")
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    Image.new("RGB", (8, 8)).save(folder / "image_named.dat", format="PNG")  # an image, but not by its name
    assert predict(tiny_checkpoint, folder, tmp_path / "out") == 0
    printed = capsys.readouterr()
    for name in ("notes.txt", "clip.mp4", "image_named.dat"):
        assert f"skipped: {folder / name}" in printed.out
    assert "error" not in printed.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".shares",  # the image's record (docs/predicting.md#continuing-a-job)
        "legend.png",
        "photo_clusters.png",
        "photo_color.png",
        "photo_overlay.png",
        "predict.json",
        "shares.csv",
    ]


def test_predict_image_that_does_not_decode_is_exit_1_and_the_others_are_done(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (40, 30), "green").save(folder / "a_photo.png")
    Image.new("RGB", (40, 30), "red").save(folder / "c_photo.jpg")
    (folder / "b_broken.jpg").write_bytes(b"not a jpeg at all")
    (folder / "notes.txt").write_text("shopping list")
    assert predict(tiny_checkpoint, folder, tmp_path / "out") == 1
    printed = capsys.readouterr()
    last = printed.err.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 3 image(s) could not be read") and "b_broken.jpg" in last
    assert "notes.txt" not in last
    assert f"not segmented: {folder / 'b_broken.jpg'}: cannot read the image" in printed.out
    assert (tmp_path / "out" / "a_photo_color.png").is_file() and (tmp_path / "out" / "c_photo_color.png").is_file()


# ---------------------------------------------------------------- hubconf.py


def test_hub_checkpoint_dir_that_cannot_be_written(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(ReportedError, match=r"checkpoint_dir .*a_file.* not a folder"):
        torch.hub.load(str(ROOT), "iddc_vits16_cocostuff27", source="local", checkpoint_dir=a_file / "sub")
    assert a_file.read_text() == "mine"


def test_hub_without_gdown_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [key for key in sys.modules if key == "gdown" or key.startswith("gdown.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "gdown", None)
    with pytest.raises(ReportedError, match=re.escape(f"pip install {shlex.quote(requirement('gdown'))}")):
        torch.hub.load(str(ROOT), "iddc_vits8_cocostuff27", source="local", checkpoint_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_stopped_training_is_an_error_line_with_the_signals_code(capsys):
    from engine.training import StopRequests

    stop = StopRequests()
    stop.signum = signal.SIGTERM

    @entry_point
    def main(argv=None):
        raise stop.stopped(Path("run") / "resume.pth", 1, 2, 6)

    assert main([]) == EXIT_TERMINATED
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM at epoch 1, batch 2 (step 6); run/resume.pth holds this point")
