"""Turn training runs and evaluation JSONs into one results table (markdown and CSV).

    python scripts/summarize.py outputs/train_seed1 outputs/train_seed2 outputs/val_cocostuff27_vits16_sliding.json
    python scripts/summarize.py outputs/*/ outputs/*.json --csv results.csv --markdown results.md
    python scripts/summarize.py outputs/sweep                      # a train.py --sweep folder

A training run (a train.py --output-dir) gives rows from its log.jsonl: the best and the last
epoch under the validation protocol, and the last model under --final-protocol when it ran, each
with its linear probe. A run without validation (a folder of images without labels) gives one
row, its last epoch, with its clusters' diagnostics only. An eval.py or baseline_kmeans.py
--output-json file gives one row. Rows that share dataset, backbone, method, protocol, flip, CRF,
checkpoint (best, last, or the file name) and number of clusters K are one line of the table: Acc
and mIoU as mean and standard deviation (n - 1) over seeds; with K above the class count, the
many-to-one Acc and mIoU apart; the clusters' label-free diagnostics of the epoch (empty clusters,
mean top probability) where the run logged them.

A sweep folder (train.py --sweep) gives a sensitivity table instead: each variant's varied values
against Acc and mIoU of its clusters and its probe, at its best and its last epoch, and its
clusters' diagnostics at its last epoch, then, for each varied key, every value against the means
over the variants trained with it. A sweep of num_clusters is the table to choose K from
(docs/sweeps.md).
"""

import csv
import io
import json
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a file, the script only sees scripts/
    sys.path.insert(0, str(REPO_ROOT))

from engine.evaluation import make_protocol  # noqa: E402
from utils.cli import ArgumentParser, entry_point  # noqa: E402
from utils.errors import OptionError, ReportedError  # noqa: E402
from utils.files import check_writable_file, read_yaml, write_text_atomic  # noqa: E402

GROUP_FIELDS = ("dataset", "backbone", "method", "protocol", "flip", "crf", "checkpoint", "clusters")
METRICS = ("acc", "miou", "probe_acc", "probe_miou")
# Columns after METRICS: the many-to-one match (K > C) and the clusters' label-free diagnostics.
MANY_TO_ONE = ("acc_many_to_one", "miou_many_to_one")
DIAGNOSTICS = ("empty_clusters", "largest_share", "top_probability")
EXTRA_METRICS = (*MANY_TO_ONE, "empty_clusters", "top_probability")
RUN_LOG, RUN_CONFIG = "log.jsonl", "config.yaml"  # what train.py writes in --output-dir
SWEEP_MANIFEST = "sweep.json"  # engine/sweep.py's MANIFEST_FILE
# The sensitivity table's metrics: (checkpoint, metric) pairs.
SWEEP_METRICS = tuple((checkpoint, metric) for checkpoint in ("best", "last") for metric in METRICS)
SWEEP_EXTRA = tuple((checkpoint, metric) for checkpoint in ("best", "last") for metric in MANY_TO_ONE) + tuple(
    ("last", metric) for metric in DIAGNOSTICS
)
SWEEP_COLUMNS = SWEEP_METRICS + SWEEP_EXTRA


class SummaryError(ReportedError, ValueError):
    """A path given to summarize.py is neither a training run nor an evaluation JSON (exit 2)."""


@dataclass
class Row:
    dataset: str
    backbone: str
    method: str
    protocol: str
    flip: bool
    crf: bool
    checkpoint: str
    seed: object
    source: str
    acc: float  # None for a run without validation
    miou: float
    probe_acc: float = None
    probe_miou: float = None
    clusters: int = None
    acc_many_to_one: float = None
    miou_many_to_one: float = None
    empty_clusters: int = None
    largest_share: float = None
    top_probability: float = None

    def group(self):
        return tuple(getattr(self, name) for name in GROUP_FIELDS)


def backbone_of(config):
    """The backbone a config names; configs from before backbones were named are DINO ViT-S."""
    return config.get("backbone") or f"dino_vits{config.get('patch_size') or 16}"


def rows_from_run(run_dir):
    """Best and last validation epochs, and the final evaluation, of one train.py output folder."""
    log_path, config_path = run_dir / RUN_LOG, run_dir / RUN_CONFIG
    if not log_path.is_file() or not config_path.is_file():
        raise SummaryError(
            f"{run_dir}: not a training run (expected log.jsonl and config.yaml from train.py --output-dir)"
        )
    config = read_yaml(config_path, str(config_path), SummaryError) or {}
    if not isinstance(config, dict):
        raise SummaryError(f"{config_path}: expected the mapping of options train.py writes")
    try:
        entries = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise SummaryError(f"{log_path}: a line is not JSON ({err})") from err
    entries = [entry for entry in entries if isinstance(entry, dict)]
    epochs = [entry for entry in entries if entry.get("kind") == "val"]
    diagnosed = {entry.get("epoch"): entry for entry in entries if entry.get("kind") == "clusters"}
    if not epochs and not diagnosed:
        raise SummaryError(f"{log_path}: no validation epoch and no cluster diagnostics logged yet")
    common = dict(
        dataset=config.get("dataset", "cocostuff27"),
        backbone=backbone_of(config),
        method="iddc",
        seed=config.get("seed"),
        source=str(run_dir),
        clusters=config.get("num_clusters"),
    )
    try:
        if not epochs:  # no validation split: the last epoch's diagnostics
            last = diagnosed[max(diagnosed)]
            row = Row(protocol="-", flip=False, crf=False, checkpoint="last", acc=None, miou=None, **common)
            return [replace(row, **_diagnostics(last))]
        best = epochs[0]
        for entry in epochs:  # ">=" as train.py, which keeps the later of equal epochs
            if _selection_miou(entry) >= _selection_miou(best):
                best = entry
        rows = [
            _run_row(entry, kind, common, diagnosed.get(entry["epoch"]))
            for kind, entry in (("best", best), ("last", epochs[-1]))
        ]
        rows.extend(
            _run_row(entry, "last", common, diagnosed.get(epochs[-1]["epoch"]))
            for entry in entries
            if entry.get("kind") == "final"
        )
    except (KeyError, TypeError, ValueError) as err:
        raise SummaryError(
            f"{log_path}: a validation row lacks what train.py logs ({type(err).__name__}: {err})"
        ) from err
    return rows


def _selection_miou(entry):
    """The mIoU train.py picks best_model.pth by: the many-to-one one where there are more clusters than classes."""
    return entry.get("miou_many_to_one", entry["miou"])


def _run_row(entry, checkpoint, common, diagnostics):
    protocol = make_protocol(entry["protocol"])  # training evaluates with each protocol's defaults
    row = Row(
        protocol=protocol.name,
        flip=protocol.flip,
        crf=protocol.crf,
        checkpoint=checkpoint,
        acc=entry["acc"],
        miou=entry["miou"],
        probe_acc=entry.get("probe_acc"),
        probe_miou=entry.get("probe_miou"),
        acc_many_to_one=entry.get("acc_many_to_one"),
        miou_many_to_one=entry.get("miou_many_to_one"),
        **common,
    )
    return row if diagnostics is None else replace(row, **_diagnostics(diagnostics))


def _diagnostics(entry):
    """The diagnostics fields of a Row from a 'clusters' entry of log.jsonl."""
    return {name: entry[name] for name in DIAGNOSTICS}


def row_from_json(path):
    """One row from an eval.py or baseline_kmeans.py --output-json file."""
    try:
        result = json.loads(path.read_text())
        settings = result["protocol_settings"]
        acc, miou = float(result["acc"]), float(result["miou"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise SummaryError(
            f"{path}: not an eval.py or baseline_kmeans.py results file ({type(err).__name__}: {err})"
        ) from err
    config = result.get("config") or {}
    method = result.get("method", "iddc")
    if method == "kmeans":
        checkpoint = "-"
    else:
        name = Path(result.get("checkpoint") or "?").name
        checkpoint = {"best_model.pth": "best", "last_model.pth": "last"}.get(name, name)
    return Row(
        dataset=config.get("dataset", "cocostuff27"),
        backbone=result.get("backbone") or backbone_of(config),
        method=method,
        protocol=result["protocol"],
        flip=bool(settings.get("flip")),
        crf=bool(settings.get("crf")),
        checkpoint=checkpoint,
        seed=result.get("seed"),
        source=str(path),
        acc=acc,
        miou=miou,
        clusters=len(result["assignment"]) if isinstance(result.get("assignment"), dict) else None,
        acc_many_to_one=result.get("acc_many_to_one"),
        miou_many_to_one=result.get("miou_many_to_one"),
    )


def is_sweep(path):
    return path.is_dir() and (path / SWEEP_MANIFEST).is_file()


def sweep_table(sweep_dir):
    """(varied keys, one dict per variant): its name, its values of the keys and its best and last metrics."""
    manifest_path = sweep_dir / SWEEP_MANIFEST
    try:
        variants = json.loads(manifest_path.read_text())["variants"]
        entries = [(entry["name"], entry["folder"], dict(entry["overrides"])) for entry in variants]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise SummaryError(f"{manifest_path}: not a sweep manifest of train.py ({type(err).__name__}: {err})") from err
    keys = list(dict.fromkeys(key for _, _, overrides in entries for key in overrides))
    table = []
    for name, folder, _ in entries:
        run_dir = sweep_dir / folder
        # best and last (validation protocol); a run without validation gives its last epoch only
        rows = {row.checkpoint: row for row in rows_from_run(run_dir)[:2]}
        config = read_yaml(run_dir / "config.yaml", str(run_dir / "config.yaml"), SummaryError) or {}
        line = {"variant": name, "protocol": rows["last"].protocol}
        line.update({key: config.get(key) for key in keys})  # resolved: a variant that kept a key shows its value
        line.update(
            {
                (checkpoint, metric): getattr(rows[checkpoint], metric) if checkpoint in rows else None
                for checkpoint, metric in SWEEP_COLUMNS
            }
        )
        table.append(line)
    return keys, table


def sensitivity(keys, table):
    """For each varied key and each of its values (sorted): the variants trained with it and their mean metrics."""
    lines = []
    for key in keys:
        for value in sorted({line[key] for line in table}, key=lambda v: (v is None, v)):
            members = [line for line in table if line[key] == value]
            means = {column: mean_std([line[column] for line in members])[0] for column in SWEEP_COLUMNS}
            lines.append({"key": key, "value": value, "n": len(members), **means})
    return lines


HEADERS = {
    "acc": "Acc",
    "miou": "mIoU",
    "probe_acc": "probe Acc",
    "probe_miou": "probe mIoU",
    "acc_many_to_one": "many-to-one Acc",
    "miou_many_to_one": "many-to-one mIoU",
    "empty_clusters": "empty clusters",
    "largest_share": "largest share %",
    "top_probability": "top prob",
}


def _number(value, metric=None):
    if value is None:
        return "-"
    if metric == "largest_share":
        return f"{100 * value:.1f}"
    if metric == "empty_clusters":
        return f"{value:g}"  # a count, or a mean of counts
    return f"{value:.2f}" if metric == "top_probability" else f"{value:.1f}"


def _metric_headers(columns):
    return [f"{checkpoint} {HEADERS[metric]}" for checkpoint, metric in columns]


def sweep_markdown(sweep_dir, keys, table):
    """The sweep's tables, without the columns no variant has a value in (a sweep without labels
    has no Acc, one without K above the class count no many-to-one figures)."""
    protocol = table[0]["protocol"] if table else "-"
    columns = [column for column in SWEEP_COLUMNS if any(line[column] is not None for line in table)]
    header = ["variant", *keys, *_metric_headers(columns)]
    lines = [f"Sweep {sweep_dir}: {len(table)} variants, validation protocol {protocol}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in table:
        cells = [line["variant"], *(str(line[key]) for key in keys), *(_number(line[c], c[1]) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    header = ["key", "value", "variants", *_metric_headers(columns)]
    lines += ["", "Sensitivity: means over the variants trained with each value", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in sensitivity(keys, table):
        cells = [line["key"], str(line["value"]), str(line["n"]), *(_number(line[c], c[1]) for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sweep_csv(sweeps):
    """One CSV row per variant of every sweep: its values (empty where a sweep does not vary a key) and metrics."""
    keys = list(dict.fromkeys(key for _, sweep_keys, _ in sweeps for key in sweep_keys))
    columns = [f"{checkpoint}_{metric}" for checkpoint, metric in SWEEP_COLUMNS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["sweep", "variant", "protocol", *keys, *columns], lineterminator="\n")
    writer.writeheader()
    for sweep_dir, _, table in sweeps:
        for line in table:
            record = {"sweep": str(sweep_dir), "variant": line["variant"], "protocol": line["protocol"]}
            record.update({key: line.get(key, "") for key in keys})
            record.update(
                {name: "" if line[c] is None else f"{line[c]:.4f}" for name, c in zip(columns, SWEEP_COLUMNS)}
            )
            writer.writerow(record)
    return out.getvalue()


def collect(paths):
    rows = []
    for path in map(Path, paths):
        if path.is_dir():
            rows.extend(rows_from_run(path))
        elif path.is_file():
            rows.append(row_from_json(path))
        else:
            raise SummaryError(f"{path}: no such file or folder")
    return rows


def mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarize(rows):
    """One dict a group, in the order groups first appear; metrics as (mean, std) pairs."""
    groups = {}
    for row in rows:
        groups.setdefault(row.group(), []).append(row)
    table = []
    for key, members in groups.items():
        line = dict(zip(GROUP_FIELDS, key))
        line["seeds"] = ",".join("?" if row.seed is None else str(row.seed) for row in members)
        line["n"] = len(members)
        for metric in (*METRICS, *EXTRA_METRICS):
            line[metric] = mean_std([getattr(row, metric) for row in members])
        table.append(line)
    return table


def _cell(mean, std, digits=1):
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def to_markdown(table):
    header = [
        "dataset",
        "backbone",
        "method",
        "protocol",
        "flip",
        "CRF",
        "checkpoint",
        "seeds",
        "Acc",
        "mIoU",
        "probe Acc",
        "probe mIoU",
        "K",
        *(HEADERS[metric] for metric in EXTRA_METRICS),
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in table:
        cells = [
            line["dataset"],
            line["backbone"],
            line["method"],
            line["protocol"],
            "yes" if line["flip"] else "no",
            "yes" if line["crf"] else "no",
            line["checkpoint"],
            f"{line['seeds']} (n={line['n']})",
            *(_cell(*line[metric]) for metric in METRICS),
            "-" if line["clusters"] is None else str(line["clusters"]),
            *(_cell(*line[metric], digits=2 if metric == "top_probability" else 1) for metric in EXTRA_METRICS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table):
    out = io.StringIO()
    metrics = (*METRICS, *EXTRA_METRICS)
    fields = [*GROUP_FIELDS, "seeds", "n"] + [f"{metric}_{stat}" for metric in metrics for stat in ("mean", "std")]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for line in table:
        record = {name: line[name] for name in (*GROUP_FIELDS, "seeds", "n")}
        for metric in metrics:
            mean, std = line[metric]
            record[f"{metric}_mean"] = "" if mean is None else f"{mean:.4f}"
            record[f"{metric}_std"] = "" if std is None else f"{std:.4f}"
        writer.writerow(record)
    return out.getvalue()


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_JSON", help="train.py output folders and eval JSON files")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="also write the markdown table here")
    parser.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV here")
    return parser


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    inputs = [file for path in map(Path, args.paths) for file in (path, path / RUN_LOG, path / RUN_CONFIG)]
    for option, path in (("--markdown", args.markdown), ("--csv", args.csv)):
        if path:  # before anything is read: a table goes nowhere it cannot be written, nor over an input
            check_writable_file(path, option, inputs=inputs)
    sweep_paths = [path for path in map(Path, args.paths) if is_sweep(path)]
    other_paths = [path for path in args.paths if not is_sweep(Path(path))]
    if sweep_paths and other_paths and args.csv:
        raise OptionError(
            "--csv: a sweep's table and the runs' table have different columns; summarize the sweep "
            "folders and the other runs apart"
        )
    sweeps = [(path, *sweep_table(path)) for path in sweep_paths]
    table = summarize(collect(other_paths)) if other_paths else None
    parts = [sweep_markdown(path, keys, lines) for path, keys, lines in sweeps]
    if table is not None:
        parts.append(to_markdown(table))
    markdown = "\n".join(parts)
    print(markdown, end="")
    csv_text = sweep_csv(sweeps) if sweeps else to_csv(table)
    for path, text in ((args.markdown, markdown), (args.csv, csv_text)):
        if path:
            write_text_atomic(path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
