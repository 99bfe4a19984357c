"""Sweeps (train.py --sweep): each variant trained on the shared backbone pass is its own single run.

One small fixture (8 training images, batch 4: one epoch of 2 steps; a depth-1 ViT of width 64)
serves every test. The runs are shared: the sweep and the single runs it must equal are made once
(module fixtures), and the independent processes (the 2-process runs, forked from this one, and
the sweep killed mid-epoch) start together, before the in-process runs, and run while those do.
The sweeps use the configs' loader workers (8), the single runs none (the samples do not depend on
them), so the equalities hold across worker counts too.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import finish_ranks, save_dino, save_released, small_model, start_ranks
from test_train import head_weights, max_weight_difference, read_log

import eval as eval_cli
import train as train_cli
from data.synthetic import write_synthetic_cocostuff
from engine.sweep import MANIFEST_FILE, PENDING_RESUME_FILE, RESUME_FILE
from engine.trainer import initial_head_states
from engine.training import seed_everything
from modules.checkpoint import new_iddc_model
from modules.model import LinearProbe
from scripts import summarize

ROOT = Path(__file__).resolve().parents[1]
# The Acceptance's three variants: lambda1, t+, and lr (with a head seed of its own).
VARIANTS = {
    "lambda1": {"neg_weight": 1.0},
    "t_plus": {"pos_threshold": 0.25},
    "lr": {"lr": 1.0e-3, "head_seed": 2},
}
SINGLE_FLAGS = {
    "lambda1": ["--neg-weight", "1.0"],
    "t_plus": ["--pos-threshold", "0.25"],
    "lr": ["--lr", "1e-3", "--head-seed", "2"],
}
LOSSES = ("total", "pos", "neg", "balance", "entropy", "probe")


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("sweep")
    write_synthetic_cocostuff(work / "data", num_train=8, num_val=1, sizes=((256, 224), (224, 240), (240, 240)))
    save_dino(small_model(seed=3, depth=1), work / "dino.pth")
    (work / "sweep.yaml").write_text(
        yaml.safe_dump({"variants": [{"name": name, **values} for name, values in VARIANTS.items()]}, sort_keys=False)
    )
    return work


def flags(work, output_dir, *extra, num_workers=None):
    """train.py's flags; ``num_workers`` None keeps the default loader workers (the configs' 8)."""
    workers = [] if num_workers is None else ["--num-workers", str(num_workers)]
    return [
        "--data-root",
        str(work / "data"),
        "--backbone-weights",
        str(work / "dino.pth"),
        "--output-dir",
        str(output_dir),
        "--batch-size",
        "4",
        "--lr",
        "5e-3",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--val-limit",
        "1",
        *workers,
        *extra,
    ]


def kill_at_commit(sweep_dir, process, outcome, timeout=240):
    """SIGKILL ``process`` as soon as the sweep's manifest names a mid-epoch position (every variant
    holds it); runs in a thread, beside the in-process runs. ``outcome`` receives what went wrong."""
    deadline = time.monotonic() + timeout
    manifest = Path(sweep_dir) / MANIFEST_FILE
    while time.monotonic() < deadline and process.poll() is None:
        try:
            position = json.loads(manifest.read_text())["position"]
        except (OSError, ValueError):
            position = None
        if position is not None and position["batch"] >= 1:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=60)
            return
        time.sleep(0.01)
    process.kill()
    outcome.append(process.communicate()[0][-3000:] or "no mid-epoch commit")


@pytest.fixture(scope="module")
def runs(fixture_dir):
    """Every run the equalities need, the independent ones at the same time: the 2-process runs and
    the sweep to be killed in subprocesses, the killer in a thread, the rest in this process."""
    work = fixture_dir
    sweep = ["--sweep", str(work / "sweep.yaml")]
    distributed = start_ranks(  # forked from this process, 2 ranks running the commands in a row
        [("train.py", flags(work, work / "ddp_sweep", *sweep, num_workers=0))]
        + [("train.py", flags(work, work / f"ddp_{name}", *SINGLE_FLAGS[name], num_workers=0)) for name in VARIANTS],
        2,
        work,
    )
    killed = subprocess.Popen(
        [sys.executable, "train.py", *flags(work, work / "killed", *sweep, "--checkpoint-every", "1")],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())),  # this process's: the same sums
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    failures = []
    killer = threading.Thread(target=kill_at_commit, args=(work / "killed", killed, failures))
    killer.start()
    assert train_cli.main(flags(work, work / "sweep", *sweep)) == 0
    for name in VARIANTS:  # no loader workers: a sample does not depend on the process that reads it
        assert train_cli.main(flags(work, work / f"single_{name}", *SINGLE_FLAGS[name], num_workers=0)) == 0
    killer.join()
    assert not failures, failures[0]
    finish_ranks(distributed)
    return work


def train_rows(run_dir):
    """Every logged training value but the timing."""
    return [
        {k: v for k, v in row.items() if k != "images_per_s"} for row in read_log(run_dir) if row["kind"] == "train"
    ]


def val_lines(run_dir):
    """The validation rows as written (they hold NaN IoUs of absent classes, which never compare equal)."""
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["kind"] == "val"]


def test_sweep_variants_are_their_single_runs(runs):
    """Bit for bit on CPU: checkpoints and every logged value but timings."""
    assert sorted(p.name for p in (runs / "sweep").iterdir()) == sorted([MANIFEST_FILE, "train.log", *VARIANTS])
    for name in VARIANTS:
        variant, single = runs / "sweep" / name, runs / f"single_{name}"
        for checkpoint in ("best_model.pth", "last_model.pth"):
            a, b = head_weights(variant / checkpoint), head_weights(single / checkpoint)
            assert all(torch.equal(a[key], b[key]) for key in a), (name, checkpoint)
        assert train_rows(variant) == train_rows(single) and len(train_rows(single)) == 2
        assert val_lines(variant) == val_lines(single) and len(val_lines(single)) == 1
        config = yaml.safe_load((variant / "config.yaml").read_text())
        assert config["output_dir"] == str(variant) and config["sweep"] is None
        assert {key: config[key] for key in VARIANTS[name]} == VARIANTS[name]
        assert sorted(p.name for p in variant.iterdir()) == [
            "best_model.pth",
            "config.yaml",
            "last_model.pth",
            "log.jsonl",
            RESUME_FILE,
            "tensorboard",
        ]
    manifest = json.loads((runs / "sweep" / MANIFEST_FILE).read_text())
    assert manifest["position"] == {"epoch": 1, "batch": 0, "step": 2}
    assert [entry["overrides"] for entry in manifest["variants"]] == list(VARIANTS.values())


def test_sweep_resumes_after_sigkill_mid_epoch(runs):
    """Killed with a mid-epoch commit; a kill between two writes is simulated on top (one variant's
    commit left pending, another's next file written before the manifest): --resume ends where the
    single runs do."""
    killed = runs / "killed"
    position = json.loads((killed / MANIFEST_FILE).read_text())["position"]
    assert position == {"epoch": 0, "batch": 1, "step": 1}
    first, second = (killed / name for name in list(VARIANTS)[:2])
    for folder in (first, second):  # as the kill left them: the files at the manifest's position
        pending = folder / PENDING_RESUME_FILE
        if pending.exists() and torch.load(pending, weights_only=True)["step"] == position["step"]:
            os.replace(pending, folder / RESUME_FILE)
        pending.unlink(missing_ok=True)
    os.replace(first / RESUME_FILE, first / PENDING_RESUME_FILE)  # renamed after the manifest: not yet
    older = torch.load(first / PENDING_RESUME_FILE, weights_only=True)
    older["step"] -= 1
    older["resume_at"]["batch"] -= 1
    torch.save(older, first / RESUME_FILE)
    ahead = torch.load(second / RESUME_FILE, weights_only=True)
    ahead["step"] += 1
    ahead["resume_at"]["batch"] += 1
    torch.save(ahead, second / PENDING_RESUME_FILE)  # the next step, written before the kill: discarded
    # No --sweep: the manifest names the variants; the backbone comes from the resume files.
    assert train_cli.main(flags(runs, killed, "--resume", "--backbone-weights", "/nonexistent-not-needed")) == 0
    assert not any(killed.glob(f"*/{PENDING_RESUME_FILE}"))
    for name in VARIANTS:
        assert (
            max_weight_difference(runs / f"single_{name}" / "last_model.pth", killed / name / "last_model.pth") <= 1e-6
        )
        a, b = train_rows(runs / f"single_{name}"), train_rows(killed / name)
        assert [row["step"] for row in a] == [row["step"] for row in b] == [1, 2]
        for x, y in zip(a, b):
            assert (x["n_pos"], x["n_neg"]) == (y["n_pos"], y["n_neg"])
            for loss in LOSSES:
                assert y[loss] == pytest.approx(x[loss], rel=1e-6, abs=1e-7), (name, loss)


def test_two_process_sweep(runs):
    """= 2-process single runs within 1e-6; = 1-process single runs within the 1-vs-N tolerance."""
    for name in VARIANTS:
        variant, two, one = runs / "ddp_sweep" / name, runs / f"ddp_{name}", runs / f"single_{name}"
        assert max_weight_difference(variant / "last_model.pth", two / "last_model.pth") <= 1e-6
        assert train_rows(variant) == train_rows(two)
        assert max_weight_difference(variant / "last_model.pth", one / "last_model.pth") <= 1e-4
        for x, y in zip(train_rows(one), train_rows(variant), strict=True):
            assert (x["n_pos"], x["n_neg"]) == (y["n_pos"], y["n_neg"])
            for loss in LOSSES:
                assert y[loss] == pytest.approx(x[loss], rel=1e-6, abs=1e-7), (name, loss)


def test_head_seed_draws_the_heads_of_that_seed(fixture_dir):
    """--head-seed S starts from the head and probe of --seed S (the rest of the run keeps --seed)."""
    seed_everything(2)
    model = new_iddc_model("dino_vits16", fixture_dir / "dino.pth")
    probe = LinearProbe(model.vit.embed_dim, model.num_classes)
    seed_everything(1)
    other = new_iddc_model("dino_vits16", fixture_dir / "dino.pth")
    before = torch.get_rng_state()
    head, classifier, probe_state = initial_head_states(other, 2)
    assert torch.equal(torch.get_rng_state(), before)  # the run's own stream is untouched
    for ours, theirs in ((head, model.head_nonlinear), (classifier, model.classifier), (probe_state, probe)):
        assert all(torch.equal(ours[key], value) for key, value in theirs.state_dict().items())


def test_variant_folder_resumes_as_a_single_run(runs, tmp_path):
    variant = shutil.copytree(runs / "sweep" / "t_plus", tmp_path / "t_plus")
    extra = ["--pos-threshold", "0.25", "--resume", "--epochs", "2"]
    assert train_cli.main(flags(runs, variant, *extra, num_workers=0)) == 0
    assert [row["epoch"] for row in read_log(variant) if row["kind"] == "val"] == [0, 1]
    assert not (variant / MANIFEST_FILE).exists()


def test_eval_groups_checkpoints_by_backbone(runs, tmp_path, capsys):
    """Three checkpoints of one backbone and one of another: two passes, each result the one of
    evaluating that checkpoint alone."""
    links = {}
    for name in VARIANTS:
        links[name] = tmp_path / f"{name}.pth"
        links[name].symlink_to(runs / "sweep" / name / "last_model.pth")
    links["other"] = save_released(small_model(seed=9, depth=1), tmp_path / "other.pth")
    common = ["--data-root", runs / "data", "--device", "cpu", "--num-workers", "0", "--protocol", "resize320"]
    common = [str(arg) for arg in common]
    out = tmp_path / "results"
    assert eval_cli.main([*common, "--checkpoint", *map(str, links.values()), "--output-json", str(out)]) == 0
    assert "4 checkpoints, 2 backbone(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.json")) == sorted(f"{name}.json" for name in links)
    for name, path in links.items():
        alone = tmp_path / f"alone_{name}.json"
        assert eval_cli.main([*common, "--checkpoint", str(path), "--output-json", str(alone)]) == 0
        shared, single = json.loads((out / f"{name}.json").read_text()), json.loads(alone.read_text())
        assert shared["confusion"] == single["confusion"] and shared["checkpoint"] == str(path)
        assert shared["config"]["checkpoint"] == single["config"]["checkpoint"] == str(path)
    same_stem = [str(runs / "sweep" / name / "last_model.pth") for name in ("lambda1", "t_plus")]
    assert eval_cli.main([*common, "--checkpoint", *same_stem, "--output-json", str(tmp_path / "x")]) == 2
    assert "both write last_model.json" in capsys.readouterr().err.strip().splitlines()[-1]


def test_summarize_sensitivity_table(runs, tmp_path):
    csv_path = tmp_path / "sweep.csv"
    assert summarize.main([str(runs / "sweep"), "--csv", str(csv_path)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("sweep,variant,protocol,neg_weight,pos_threshold,lr,head_seed,best_acc,best_miou")
    rows = {line.split(",")[1]: line.split(",") for line in lines[1:]}
    assert rows["lambda1"][3:7] == ["1.0", "0.2", "0.005", "1"] and rows["lr"][3:7] == ["1.4", "0.2", "0.001", "2"]
    last = [row for row in read_log(runs / "single_t_plus") if row["kind"] == "val"][-1]
    assert float(rows["t_plus"][11]) == pytest.approx(last["acc"], abs=1e-4)  # last_acc


@pytest.mark.parametrize(
    "sweep, culprit",
    [
        ({"variants": [{"neg_wieght": 1.0}]}, "unknown key 'neg_wieght'"),
        ({"variants": [{"batch_size": 8}]}, "batch_size is shared by every variant"),
        ({"variants": [{"name": "a", "lr": 1.0e-3}, {"name": "a", "lr": 2.0e-3}]}, "two variants are named 'a'"),
        ({"variants": [{"lr": 5.0e-3}, {"name": "b"}]}, "identical values"),
        ({"variants": []}, "variants: expected a non-empty list"),
        ({"grid": {"lr": []}}, "grid: lr: expected a non-empty list"),
        ({"grid": {"lr": ["fast"]}}, "lr: expected a number, got 'fast'"),
        ({"variants": [{"lr": -1.0}]}, "--lr must be a positive finite number"),
    ],
    ids=["unknown", "shared", "same-name", "identical", "empty", "empty-grid", "not-a-number", "bad-value"],
)
def test_bad_sweeps_get_one_line(fixture_dir, tmp_path, capsys, sweep, culprit):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    capsys.readouterr()
    assert train_cli.main(flags(fixture_dir, tmp_path / "out", "--sweep", str(path))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert culprit in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_grid_and_disk_space(fixture_dir, tmp_path, capsys, monkeypatch):
    """A grid expands to the cartesian product; a sweep the disk cannot hold is refused in one line."""
    import engine.sweep
    import engine.trainer

    sweep = {"variants": [{"name": "paper"}], "grid": {"neg_weight": [1.0, 2.0], "lr": ["1e-3", 2.0e-3]}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    real = engine.trainer.shutil.disk_usage
    monkeypatch.setattr(engine.trainer.shutil, "disk_usage", lambda where: real(where)._replace(free=1000))
    capsys.readouterr()
    assert train_cli.main(flags(fixture_dir, tmp_path / "out", "--sweep", str(path), num_workers=0)) == 1
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert "5 variants x" in last and "the disk has 0.0 MB free" in last
    assert not (tmp_path / "out").exists()  # refused before anything is written
    names = [name for name, _ in engine.sweep.read_sweep(str(path), set())]
    assert names[1:4] == ["neg_weight=1.0,lr=0.001", "neg_weight=1.0,lr=0.002", "neg_weight=2.0,lr=0.001"]


def test_sweep_block_in_a_config(fixture_dir, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"sweep": {"grid": {"lr": [1.0e-3]}, "variants": [{"seed": 3}]}}))
    capsys.readouterr()
    assert train_cli.main(flags(fixture_dir, tmp_path / "out", "--config", str(config))) == 2
    assert "sweep (in --config): variant 1: seed is shared by every variant" in capsys.readouterr().err
