"""scripts/summarize.py: fake training runs and evaluation JSONs -> one table."""

import csv
import io
import json

import pytest
import yaml
from cli_runner import run_command_lines

from scripts import summarize


def fake_run(folder, seed, epochs, final=None, patch_size=16):
    """A train.py output folder: config.yaml and log.jsonl with (acc, miou, probe_acc, probe_miou) per epoch."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"seed": seed, "patch_size": patch_size, "val_protocol": "resize320"})
    )
    lines = [{"kind": "train", "epoch": 0, "step": 1, "total": 1.0}]
    for epoch, (acc, miou, probe_acc, probe_miou) in enumerate(epochs):
        lines.append(
            {
                "kind": "val",
                "epoch": epoch,
                "protocol": "resize320",
                "acc": acc,
                "miou": miou,
                "probe_acc": probe_acc,
                "probe_miou": probe_miou,
            }
        )
    if final is not None:
        lines.append(
            {
                "kind": "final",
                "protocol": "sliding",
                "acc": final[0],
                "miou": final[1],
                "probe_acc": final[2],
                "probe_miou": final[3],
            }
        )
    (folder / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def fake_eval_json(
    path, acc, miou, *, method="iddc", crf=False, checkpoint="checkpoints/cocostuff27_vits16.pth", seed=None
):
    result = {
        "acc": acc,
        "miou": miou,
        "protocol": "center320",
        "protocol_settings": {"name": "center320", "flip": True, "crf": crf},
        "checkpoint": checkpoint,
        "backbone": "dino_vits16",
        "method": method,
        "seed": seed,
        "config": {},
    }
    path.write_text(json.dumps(result))
    return path


def run(*args):
    """``python scripts/summarize.py ARGS`` in a process forked from this one (tests/cli_runner.py)."""
    return run_command_lines({"summarize": ("scripts/summarize.py", list(args), ())})["summarize"]


def test_table_from_runs_and_jsons(tmp_path):
    runs = [
        fake_run(tmp_path / "seed1", 1, [(40, 10, 60, 20), (50, 14, 62, 22), (48, 12, 63, 23)], final=(55, 16, 65, 25)),
        fake_run(tmp_path / "seed2", 2, [(44, 12, 61, 21), (52, 16, 64, 24)], final=(57, 18, 66, 26)),
        fake_run(tmp_path / "seed3", 3, [(54, 18, 66, 27), (50, 15, 64, 24)], final=(59, 20, 67, 27)),
    ]
    jsons = [
        fake_eval_json(tmp_path / "released.json", 59.9, 25.8),
        fake_eval_json(tmp_path / "released_crf.json", 61.0, 27.0, crf=True),
        fake_eval_json(tmp_path / "km0.json", 30.0, 10.0, method="kmeans", seed=0),
        fake_eval_json(tmp_path / "km1.json", 34.0, 12.0, method="kmeans", seed=1),
    ]
    md, out_csv = tmp_path / "table.md", tmp_path / "table.csv"
    done = run(*runs, *jsons, "--markdown", md, "--csv", out_csv)
    assert done.code == 0, done.stderr
    assert done.stdout == md.read_text()
    rows = {
        (r["method"], r["protocol"], r["checkpoint"], r["crf"]): r
        for r in csv.DictReader(io.StringIO(out_csv.read_text()))
    }
    assert len(rows) == 6
    best = rows[("iddc", "resize320", "best", "False")]
    # best epochs: seed1 epoch 1 (14), seed2 epoch 1 (16), seed3 epoch 0 (18)
    assert best["seeds"] == "1,2,3" and best["n"] == "3"
    assert float(best["miou_mean"]) == pytest.approx(16.0) and float(best["miou_std"]) == pytest.approx(2.0)
    assert float(best["acc_mean"]) == pytest.approx(52.0) and float(best["acc_std"]) == pytest.approx(2.0)
    assert float(best["probe_miou_mean"]) == pytest.approx((22 + 24 + 27) / 3, abs=1e-4)
    last = rows[("iddc", "resize320", "last", "False")]
    assert float(last["acc_mean"]) == pytest.approx((48 + 52 + 50) / 3, abs=1e-4)
    final = rows[("iddc", "sliding", "last", "False")]
    assert (
        final["flip"] == "True"
        and float(final["miou_mean"]) == pytest.approx(18.0)
        and float(final["miou_std"]) == pytest.approx(2.0)
    )
    released = rows[("iddc", "center320", "cocostuff27_vits16.pth", "False")]
    assert released["n"] == "1" and released["acc_std"] == "" and released["probe_acc_mean"] == ""
    assert float(rows[("iddc", "center320", "cocostuff27_vits16.pth", "True")]["acc_mean"]) == pytest.approx(61.0)
    kmeans = rows[("kmeans", "center320", "-", "False")]
    assert kmeans["seeds"] == "0,1" and float(kmeans["acc_mean"]) == pytest.approx(32.0)
    table = md.read_text()
    assert (
        "| cocostuff27 | dino_vits16 | iddc | resize320 | no | no | best | 1,2,3 (n=3) | 52.0 ± 2.0 | 16.0 ± 2.0 |"
        in table
    )
    assert "| 59.9 | 25.8 | - | - |" in table


def test_summary_reads_a_real_eval_json(tmp_path):
    from helpers import save_released, small_model

    import eval as eval_cli
    from data.synthetic import write_synthetic_cocostuff

    root = tmp_path / "data"
    write_synthetic_cocostuff(root, num_train=0, num_val=1, sizes=((240, 240),))
    checkpoint = save_released(small_model(), tmp_path / "best_model.pth", config={"seed": 7, "patch_size": 16})
    out = tmp_path / "eval.json"
    assert (
        eval_cli.main(
            [
                "--data-root",
                str(root),
                "--checkpoint",
                str(checkpoint),
                "--device",
                "cpu",
                "--num-workers",
                "0",
                "--protocol",
                "resize320",
                "--output-json",
                str(out),
            ]
        )
        == 0
    )
    (line,) = summarize.summarize(summarize.collect([out]))
    result = json.loads(out.read_text())
    assert (
        line["backbone"],
        line["method"],
        line["protocol"],
        line["flip"],
        line["crf"],
        line["checkpoint"],
        line["seeds"],
    ) == ("dino_vits16", "iddc", "resize320", False, False, "best", "7")
    assert line["acc"] == (pytest.approx(result["acc"]), None)


def test_bad_paths_are_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    assert summarize.main([str(tmp_path / "empty_run")]) == 2
    message = capsys.readouterr().err
    assert "not a training run" in message and "empty_run" in message
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert summarize.main([str(tmp_path / "other.json")]) == 2
    message = capsys.readouterr().err
    assert "other.json" in message and "results file" in message
    assert summarize.main([str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
