"""Any number of clusters K (train.py --num-clusters, the num_clusters sweep key) on the synthetic
COCO-Stuff-27 data (C = 27): K < C, K > C with the many-to-one scores, a K sweep that is its
single runs with one backbone forward per batch, a run without training labels nor validation
split, and the refused values.

The runs are made once (module fixture) and the independent ones together: the single run of
K = 40 and the label-free run are forked from this process and run while the sweep and the single
run of K = 5 run here, on one thread as the forked ones. One epoch of 2 steps (8 images, batch 4)
on a depth-1 ViT of width 64.
"""

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_runner import fork_script
from helpers import save_dino, small_model, wait_exit
from test_sweep import flags as sweep_flags
from test_train import head_weights, read_log

import engine.trainer
import eval as eval_cli
import train as train_cli
from data.registry import get_dataset
from data.spec import SegmentationEval
from data.synthetic import write_synthetic_cocostuff
from engine.evaluation import make_protocol, predict_head_clusters, resize_nearest
from modules.checkpoint import load_iddc_model
from modules.vit import VisionTransformer
from scripts import summarize

COCO27_SPEC = get_dataset("cocostuff27")
SWEEP_K = (5, 40)  # below and above the 27 classes


def flags(work, output_dir, *extra):
    """test_sweep's train.py flags on the same data and backbone file, without loader workers."""
    return sweep_flags(work, output_dir, *extra, num_workers=0)


def eval_flags(work):
    return ["--data-root", str(work / "data"), "--device", "cpu", "--num-workers", "0", "--protocol", "resize320"]


def without_labels():
    """In a forked run: the benchmark spec as a folder of unlabelled images (data/spec.py's attributes)."""
    spec_type = type(COCO27_SPEC)
    spec_type.has_train_labels = False
    spec_type.has_validation = lambda self, data_root=None: False


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("clusters")
    write_synthetic_cocostuff(work / "data", num_train=8, num_val=1, sizes=((256, 224), (224, 240), (240, 240)))
    save_dino(small_model(seed=3, depth=1), work / "dino.pth")
    (work / "k.yaml").write_text(yaml.safe_dump({"grid": {"num_clusters": list(SWEEP_K)}}))
    forked = {
        "single_k40": fork_script(
            "train.py", flags(work, work / "single_k40", "--num-clusters", "40"), work / "k40.out", work / "k40.err"
        ),
        "unlabelled": fork_script(
            "train.py",
            flags(work, work / "unlabelled", "--num-clusters", "6"),
            work / "unlabelled.out",
            work / "unlabelled.err",
            setup=without_labels,
        ),
    }
    deadline = time.monotonic() + 300
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the forked runs (tests/cli_runner.py): the same sums, bit for bit
    try:
        sweep = ["--sweep", str(work / "k.yaml")]
        forwards = count_backbone_forwards(lambda: train_cli.main(flags(work, work / "sweep", *sweep)))
        assert train_cli.main(flags(work, work / "single_k5", "--num-clusters", "5")) == 0
    finally:  # nothing outlives the fixture
        torch.set_num_threads(threads)
        codes = {name: wait_exit(pid, deadline) for name, pid in forked.items()}
    for name, code in codes.items():
        assert code == 0, (work / f"{name.removeprefix('single_')}.err").read_text()[-3000:]
    return work, forwards


def count_backbone_forwards(run):
    """Run ``run()`` (train.py in this process) counting the backbone's forwards: (inside the
    training epochs, outside them), the latter being the diagnostics' and the validation's."""
    real_forward, real_epoch = VisionTransformer.forward, engine.trainer.train_one_epoch
    counts, in_epoch = {"training": 0, "other": 0}, [False]

    def forward(self, images):
        counts["training" if in_epoch[0] else "other"] += 1
        return real_forward(self, images)

    def epoch(*args, **kwargs):
        in_epoch[0] = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            in_epoch[0] = False

    VisionTransformer.forward, engine.trainer.train_one_epoch = forward, epoch
    try:
        assert run() == 0
    finally:
        VisionTransformer.forward, engine.trainer.train_one_epoch = real_forward, real_epoch
    return counts


def lines_of(run_dir, kind):
    """A log's rows of ``kind`` as written (validation rows hold NaN IoUs, never equal as floats)."""
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [line for line in lines if json.loads(line)["kind"] == kind]


def without_timing(run_dir):
    return [
        {k: v for k, v in row.items() if k != "images_per_s"} for row in read_log(run_dir) if row["kind"] == "train"
    ]


def test_k_sweep_is_its_single_runs_with_one_backbone_forward_per_batch(runs):
    work, forwards = runs
    # 2 batches: 2 forwards for both variants; 1 forward of the diagnostics' 8 images and 1 of the
    # validation image, both also shared by the two K.
    assert forwards == {"training": 2, "other": 2}
    for k in SWEEP_K:
        variant, single = work / "sweep" / f"num_clusters={k}", work / f"single_k{k}"
        for checkpoint in ("best_model.pth", "last_model.pth"):
            a, b = head_weights(variant / checkpoint), head_weights(single / checkpoint)
            assert a["classifier/weight"].shape[0] == k
            assert all(torch.equal(a[key], b[key]) for key in a), (k, checkpoint)
        assert without_timing(variant) == without_timing(single) and len(without_timing(single)) == 2
        for kind in ("val", "clusters"):
            assert lines_of(variant, kind) == lines_of(single, kind) and len(lines_of(single, kind)) == 1
        config = yaml.safe_load((variant / "config.yaml").read_text())
        assert config["num_clusters"] == k
        saved = torch.load(variant / "last_model.pth", weights_only=True)
        assert saved["config"]["num_clusters"] == k
        probe = torch.load(variant / "resume.pth", weights_only=True)["probe"]
        assert probe["linear_head.weight"].shape[0] == COCO27_SPEC.num_classes  # the probe stays C wide


def test_diagnostics_and_k_table(runs, tmp_path):
    work, _ = runs
    for k in SWEEP_K:
        (row,) = [json.loads(line) for line in lines_of(work / f"single_k{k}", "clusters")]
        shares = list(row["share"].values())
        assert row["num_clusters"] == len(shares) == k and row["images"] == 8
        assert sum(shares) == pytest.approx(1.0)
        assert row["empty_clusters"] == sum(share < 0.001 for share in shares)
        assert 1 / k <= row["top_probability"] <= 1 and row["largest_share"] == max(shares)
    csv_path, markdown = tmp_path / "k.csv", tmp_path / "k.md"
    assert summarize.main([str(work / "sweep"), "--csv", str(csv_path), "--markdown", str(markdown)]) == 0
    header = markdown.read_text().splitlines()[2]
    assert header.startswith("| variant | num_clusters | best Acc | best mIoU |") and "last many-to-one mIoU" in header
    assert header.endswith("| last empty clusters | last largest share % | last top prob |")
    rows = {line["num_clusters"]: line for line in _csv(csv_path)}
    assert sorted(rows) == ["40", "5"]
    diagnostics = json.loads(lines_of(work / "single_k40", "clusters")[0])
    assert float(rows["40"]["last_empty_clusters"]) == diagnostics["empty_clusters"]
    assert float(rows["40"]["last_top_probability"]) == pytest.approx(diagnostics["top_probability"], abs=1e-4)
    val = json.loads(lines_of(work / "single_k40", "val")[0])
    assert float(rows["40"]["last_miou_many_to_one"]) == pytest.approx(val["miou_many_to_one"], abs=1e-4)
    assert rows["5"]["last_miou_many_to_one"] == "" and float(rows["5"]["last_miou"]) >= 0


def _csv(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_many_to_one_scores_equal_an_independent_computation(runs, tmp_path):
    """eval.py's many-to-one Acc and mIoU of K = 40 from its own predicted maps, computed here
    with numpy; the one-to-one figures stay apart; validation logged the same, and picked
    best_model.pth by them."""
    work, _ = runs
    checkpoint = work / "single_k40" / "last_model.pth"
    out = tmp_path / "k40.json"
    common = ["--data-root", str(work / "data"), "--device", "cpu", "--num-workers", "0", "--limit", "1"]
    assert (
        eval_cli.main([*common, "--checkpoint", str(checkpoint), "--protocol", "resize320", "--output-json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    model, _ = load_iddc_model(checkpoint)
    protocol = make_protocol("resize320")
    dataset = SegmentationEval(COCO27_SPEC, work / "data", protocol.transform(), limit=1)
    confusion = np.zeros((COCO27_SPEC.num_classes, 40), dtype=np.int64)
    for sample in dataset:
        (pred,) = predict_head_clusters(model, [sample["image"]], protocol)[0]  # (H, W)
        pred = resize_nearest(pred, protocol.score_size).numpy()
        label = resize_nearest(sample["label"], protocol.score_size).numpy()
        labelled = label < COCO27_SPEC.num_classes
        np.add.at(confusion, (label[labelled], pred[labelled]), 1)
    assert np.array_equal(confusion, np.array(result["confusion"]))
    cluster_class = confusion.argmax(axis=0)  # ties and empty clusters: the lowest class id
    merged = np.zeros((COCO27_SPEC.num_classes, COCO27_SPEC.num_classes), dtype=np.int64)
    for cluster, cls in enumerate(cluster_class):
        merged[:, cls] += confusion[:, cluster]
    tp, union = np.diag(merged), merged.sum(axis=0) + merged.sum(axis=1) - np.diag(merged)
    present = union > 0
    assert result["acc_many_to_one"] == pytest.approx(100 * tp.sum() / merged.sum())
    assert result["miou_many_to_one"] == pytest.approx(100 * np.mean(tp[present] / union[present]))
    assert result["assignment_many_to_one"] == {str(k): int(c) for k, c in enumerate(cluster_class)}
    assert len(result["assignment"]) == 40 and sum(c >= 0 for c in result["assignment"].values()) == 27
    assert result["miou"] <= result["miou_many_to_one"]
    (val,) = [json.loads(line) for line in lines_of(work / "single_k40", "val")]
    assert val["miou_many_to_one"] == pytest.approx(result["miou_many_to_one"])
    best = torch.load(work / "single_k40" / "best_model.pth", weights_only=True)
    assert best["metrics"]["miou_many_to_one"] == val["miou_many_to_one"]
    assert "many-to-one mIoU" in (work / "single_k40" / "train.log").read_text()


def test_fewer_clusters_than_classes_score_the_hungarian_match(runs, tmp_path):
    work, _ = runs
    out = tmp_path / "k5.json"
    checkpoint = work / "single_k5" / "best_model.pth"
    common = ["--data-root", str(work / "data"), "--device", "cpu", "--num-workers", "0", "--limit", "1"]
    assert (
        eval_cli.main([*common, "--checkpoint", str(checkpoint), "--protocol", "resize320", "--output-json", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert "acc_many_to_one" not in result and len(result["assignment"]) == 5
    confusion = np.array(result["confusion"])
    assert confusion.shape == (COCO27_SPEC.num_classes, 5)
    matched = set(result["assignment"].values())
    present = confusion.sum(axis=1) > 0
    for cls, name in enumerate(COCO27_SPEC.class_names):  # a class present that no cluster matched scores 0
        if present[cls] and cls not in matched:
            assert result["per_class_iou"][name] == 0.0


def test_run_without_labels(runs, tmp_path):
    """No probe, no validation, no best_model.pth; the diagnostics every epoch; summarize.py reads
    it; its resume file (without a probe) continues it."""
    work, _ = runs
    run_dir = work / "unlabelled"
    assert not (run_dir / "best_model.pth").exists() and (run_dir / "last_model.pth").is_file()
    assert lines_of(run_dir, "val") == [] and len(lines_of(run_dir, "clusters")) == 1
    assert all("probe" not in row for row in read_log(run_dir))
    resume = torch.load(run_dir / "resume.pth", weights_only=True)
    assert "probe" not in resume and resume["model"]["classifier"]["weight"].shape[0] == 6
    log = (run_dir / "train.log").read_text()
    assert log.count("linear probe off") == 1 and "best_model.pth is not written" in log
    done = summarize.main([str(run_dir), "--csv", str(tmp_path / "runs.csv")])
    assert done == 0
    (row,) = _csv(tmp_path / "runs.csv")
    assert row["clusters"] == "6" and row["acc_mean"] == "" and row["top_probability_mean"] != ""
    pid = fork_script(
        "train.py",
        flags(work, run_dir, "--num-clusters", "6", "--resume", "--epochs", "2"),
        tmp_path / "out",
        tmp_path / "err",
        setup=without_labels,
    )
    assert wait_exit(pid, time.monotonic() + 120) == 0, (tmp_path / "err").read_text()[-3000:]
    assert [json.loads(line)["epoch"] for line in lines_of(run_dir, "clusters")] == [0, 1]


@pytest.mark.parametrize(
    "extra, culprit",
    [
        (["--num-clusters", "1"], "--num-clusters 1: must lie in 2..255"),
        (["--num-clusters", "256"], "--num-clusters 256: must lie in 2..255"),
        (["--sweep", "SWEEP"], "sweep: variant num_clusters=300: --num-clusters 300: must lie in 2..255"),
        (["--num-clusters", "8", "--resume"], "a run with 40 clusters cannot continue with --num-clusters 8"),
    ],
    ids=["one", "above-255", "sweep", "resume-other-k"],
)
def test_bad_k_gets_one_line(runs, tmp_path, capsys, extra, culprit):
    work, _ = runs
    output_dir = tmp_path / "out"
    if "--resume" in extra:
        output_dir = work / "single_k40"
        before = {path: path.stat().st_mtime_ns for path in output_dir.iterdir()}
    sweep = tmp_path / "k.yaml"
    sweep.write_text(yaml.safe_dump({"grid": {"num_clusters": [8, 300]}}))
    extra = [str(sweep) if value == "SWEEP" else value for value in extra]
    capsys.readouterr()
    assert train_cli.main(flags(work, output_dir, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert culprit in err[-1] and "Traceback" not in "\n".join(err)
    if "--resume" in extra:
        assert {path: path.stat().st_mtime_ns for path in output_dir.iterdir()} == before
    else:
        assert not output_dir.exists() or not any(output_dir.iterdir())


def test_k_is_required_where_the_dataset_gives_no_class_count(runs, tmp_path, capsys, monkeypatch):
    work, _ = runs
    monkeypatch.setattr(type(COCO27_SPEC), "num_classes", property(lambda self: 0))
    capsys.readouterr()
    assert train_cli.main(flags(work, tmp_path / "out")) == 2
    assert "--num-clusters is required on --dataset cocostuff27" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_eval_refuses_another_datasets_k_but_scores_its_own(runs, tmp_path, capsys):
    """A checkpoint recording --dataset cocostuff27 is scored there whatever its K (the tests
    above); a release file (no recorded dataset) of 40 clusters is refused in one line."""
    work, _ = runs
    state = torch.load(work / "single_k40" / "last_model.pth", weights_only=True)
    del state["config"]
    torch.save(state, tmp_path / "release.pth")
    capsys.readouterr()
    assert eval_cli.main([*eval_flags(work), "--checkpoint", str(tmp_path / "release.pth")]) == 2
    assert "the model has 40 clusters but --dataset cocostuff27 has 27 classes" in capsys.readouterr().err
