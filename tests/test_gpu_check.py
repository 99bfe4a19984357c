"""scripts/gpu_check.sh: the quick CPU run end to end, its report, and its refusals."""

from pathlib import Path

import pytest
import torch
from forked_python import run_script

from scripts import gpu_check, gpu_measure

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "# iddc GPU check (--quick",
    "## Verdict",
    "## Machine",
    "## 1. Correctness: the device tests",
    "## 2. Training throughput",
    "## 3. Data loader",
    "## 4. Sliding evaluation",
    "## 5. Sweep",
)


def test_quick_cpu_run_writes_every_section(tmp_path):
    report_path = tmp_path / "gpu_report.md"
    # gpu_check.py forked from this process (tests/forked_python.py): no fresh interpreter to import torch.
    done = run_script(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--quick", "--markdown", str(report_path)],
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = report_path.read_text()
    positions = [report.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "Correctness: no correctness check failed" in report
    assert "Not run: `--quick` skips the test step." in report and "- Device tests: not run." in report
    assert f"| torch | {torch.__version__} |" in report and "| GPU | none used (--device cpu) |" in report
    # Every goal is judged: the training goal once, the evaluation goal for each backbone and precision.
    goals = [line for line in report.splitlines() if line.startswith("- Goal: ")]
    assert len(goals) == 1 + len(gpu_check.EVAL_CONFIGS)
    assert all(("**MET**" in line) != ("**MISSED**" in line) for line in goals)
    for name, precision in gpu_check.TRAINING_CONFIGS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {name} | {precision} | "))
        assert float(row.split("|")[3]) > 0  # images/s
    for workers in gpu_measure.QUICK.loader_workers:
        assert any(line.startswith(f"| {workers} | ") for line in report.splitlines())
    assert "The loader keeps up" in report or "The loader limits training" in report
    sweep = report.split("## 5. Sweep")[1]
    assert ("Not available" in sweep) == (not (ROOT / "engine" / "sweep.py").is_file())
    assert f"report written to {report_path}" in done.stdout


def test_bad_options_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # argparse's usage errors exit at once
        gpu_check.main(["--only", "everything"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: argument --only")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert gpu_check.main(["--device", "cpu", "--quick", "--markdown", str(blocker / "report.md")]) == 2
    assert "--markdown" in capsys.readouterr().err.strip().splitlines()[-1]
    assert gpu_check.main(["--device", "tpu", "--markdown", str(tmp_path / "r.md")]) == 2
    assert not (tmp_path / "r.md").exists()


def test_device_tests_are_read_from_junit(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(
        """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
        <testcase classname="tests.test_device" name="test_one_process_group" time="0.4">
          <properties><property name="backend" value="nccl"/></properties></testcase>
        <testcase classname="tests.test_device" name="test_one_training_epoch[bf16]" time="2">
          <failure message="assert False">long traceback</failure></testcase>
        <testcase classname="tests.test_device" name="test_crf_pool_beside_device_forwards" time="0">
          <skipped type="pytest.skip" message="pydensecrf is not installed, so the CRF pool is not checked"/></testcase>
        </testsuite></testsuites>"""
    )
    cases = gpu_check.read_junit(junit)
    assert [(case["name"], case["outcome"]) for case in cases] == [
        ("test_one_process_group", "passed"),
        ("test_one_training_epoch[bf16]", "failed"),
        ("test_crf_pool_beside_device_forwards", "skipped"),
    ]
    assert cases[0]["properties"] == [("backend", "nccl")]
    assert cases[1]["message"] == "assert False" and "pydensecrf" in cases[2]["message"]


@pytest.fixture(scope="module")
def quick_data(tmp_path_factory):
    return gpu_measure.QUICK, gpu_measure.write_data(tmp_path_factory.mktemp("gpu_check"), gpu_measure.QUICK)


def test_sweep_measurement_shares_the_backbone(quick_data):
    """What the sweep step measures when engine/sweep.py exists: several heads on one backbone pass."""
    sizes, (train_root, _) = quick_data
    figures = gpu_measure.measure_sweep(16, "fp32", sizes, train_root, torch.device("cpu"))
    assert figures["variants"] == sizes.sweep_variants
    assert figures["shared_s"] > 0 and figures["gain"] == pytest.approx(figures["separate_s"] / figures["shared_s"])


def test_sweep_variants_train_their_own_heads(quick_data):
    sizes, (train_root, _) = quick_data
    trainer = gpu_measure.Trainer(16, sizes, torch.device("cpu"), variants=2)
    batch = gpu_measure.resident_batch(train_root, sizes.batch_size, torch.device("cpu"))
    first, second = (run[0] for run in trainer.runs)
    assert first.head_nonlinear is trainer.model.head_nonlinear and second.head_nonlinear is not first.head_nonlinear
    before = [p.detach().clone() for p in second.parameters()]
    values = trainer.step(batch, "fp32", 0)
    assert len(values) == 2 and values[0][:5] == pytest.approx(values[1][:5])  # the same head: the same IDDC loss
    assert any(not torch.equal(a, b) for a, b in zip(before, second.parameters()))
