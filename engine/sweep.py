"""Sweeps: several variants of IDDC's head hyper-parameters trained side by side on one backbone pass.

The backbone is frozen and every training sample is a function of (seed, epoch, index), so the
variants of a sweep can share the expensive part of a step (decoding and augmenting the images,
the backbone forward) and still each be exactly the run it would have been alone: every batch
goes through the backbone once, then each variant's head, probe, loss and optimisers take the
step they would take in their own run (``engine.training.train_one_epoch``). A single run is the
sweep of one variant whose folder is ``--output-dir`` itself; ``engine.trainer.Trainer`` trains both.
This module holds what a sweep is: its file, its variants, its folder and manifest.

A sweep (``train.py --sweep FILE.yaml``, or a ``sweep:`` block in a config) is a list of variants
and/or a grid::

    variants:                 # each a set of overrides, optionally named
      - {name: strong-negatives, neg_weight: 2.0}
      - {pos_threshold: 0.25}
    grid:                     # the cartesian product of the lists
      neg_weight: [1.0, 1.4]
      lr: [5.0e-4, 1.0e-3]

Only the head's hyper-parameters (:data:`OVERRIDABLE`) vary; everything that changes the data or
the backbone is shared. ``num_clusters`` is one of them: variants of different K differ only in
their classifier's width, so they too share the data pipeline and the backbone forward. Each
variant writes what a single run writes (checkpoints, config.yaml, log.jsonl, TensorBoard) in its
own folder ``--output-dir/<name>``, so eval.py, val.sh and summarize.py read it as a run, and it
can be resumed on its own as one. The sweep folder holds
``sweep.json``, the manifest: the variants and the position (epoch, batch, step) that every
variant's resume file holds.
"""

import argparse
import copy
import itertools
import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.folder import EXCLUDED_FILE, FILE_LIST
from engine.tensorboard import TensorboardLog
from engine.training import HeadRun
from modules.model import IDDCModel, LinearProbe
from utils.errors import OptionError, OutputError
from utils.files import check_writable_dir, same_file
from utils.log import JsonlLog

RESUME_FILE = "resume.pth"
# A folder holding any of these holds a run: a new run there needs --resume or --overwrite.
RUN_FILES = ("best_model.pth", "last_model.pth", RESUME_FILE)
# What --overwrite removes before the new run starts, so that its logs do not mix with the old ones.
OVERWRITTEN_FILES = (*RUN_FILES, "config.yaml", "log.jsonl", "train.log", FILE_LIST, EXCLUDED_FILE)
MANIFEST_FILE = "sweep.json"
MANIFEST_FORMAT = "iddc-sweep-v1"
# A variant's next resume file, renamed to RESUME_FILE once the manifest names its position.
PENDING_RESUME_FILE = ".resume.pending.pth"

# The head's hyper-parameters a variant may override (train.py's option names, with _), and their types.
OVERRIDABLE = {
    "neg_weight": float,
    "balance_weight": float,
    "pos_threshold": float,
    "neg_threshold": float,
    "num_negatives": int,
    "lr": float,
    "probe_lr": float,
    "lr_power": float,
    "head_seed": int,
    "num_clusters": int,
}
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=,+-]{0,99}")
RESERVED_NAMES = {MANIFEST_FILE, "train.log", "tensorboard", *OVERWRITTEN_FILES}


@dataclass(eq=False)
class Variant:
    """One run of a sweep: its overrides, its resolved options and its folder; filled in by training."""

    name: str  # "" for a single run (its folder is --output-dir; log lines carry no prefix)
    overrides: dict
    args: argparse.Namespace
    folder: Path
    model: IDDCModel = None
    probe: LinearProbe = None
    run: HeadRun = None
    tensorboard: TensorboardLog = None
    jsonl_log: JsonlLog = None
    best_miou: float = -1.0
    resume: dict = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------- the sweep's variants


def format_value(value):
    """A value as it appears in a variant's name: repr for floats (exact), str for integers."""
    return repr(value) if isinstance(value, float) else str(value)


def variant_name(overrides):
    """``key=value`` pairs joined by commas, in the order given; ``base`` for no override."""
    return ",".join(f"{key}={format_value(value)}" for key, value in overrides.items()) or "base"


def _override_value(key, value, where):
    """``value`` for ``key`` as train.py's option type (YAML reads 5e-4, without a dot, as a string)."""
    kind = OVERRIDABLE[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(f"{where}: {key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    try:
        converted = kind(value)
    except ValueError:
        converted = None
    if converted is None or (kind is int and isinstance(value, float) and value != converted):
        raise OptionError(f"{where}: {key}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
    if kind is float and not math.isfinite(converted):
        raise OptionError(f"{where}: {key}: expected a finite number, got {value!r}")
    return converted


def _check_key(key, where, shared_options):
    """``key`` with _ for - (as in configs), if a variant may override it."""
    key = str(key).replace("-", "_")
    if key in OVERRIDABLE:
        return key
    if key in shared_options:
        raise OptionError(
            f"{where}: {key} is shared by every variant (it changes the data, the backbone or the run as a whole); "
            f"set it once, on the command line or in the config. A variant may override: {', '.join(OVERRIDABLE)}"
        )
    raise OptionError(f"{where}: unknown key {key!r}; a variant may override: {', '.join(OVERRIDABLE)}")


def read_sweep(value, shared_options):
    """The variants ``[(name, overrides)]`` of a sweep given as a YAML file name or as a mapping (a
    config's ``sweep:`` block). ``shared_options`` are train.py's other options, refused as overrides."""
    if isinstance(value, dict):
        source, content = "sweep (in --config)", value
    else:
        source = f"--sweep {value}"
        path = Path(value)
        if not path.is_file():
            raise OptionError(f"{source}: no such file")
        try:
            content = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise OptionError(f"{source}: not valid YAML ({str(err).splitlines()[0]})") from err
    expected = "expected a mapping with 'variants' (a list of overrides) and/or 'grid' (lists of values)"
    if not isinstance(content, dict) or not content:
        raise OptionError(f"{source}: {expected}")
    unknown = sorted(str(key) for key in content if key not in ("variants", "grid"))
    if unknown:
        raise OptionError(f"{source}: unknown key(s) {unknown}; {expected}")
    specs = []
    if "variants" in content:
        listed = content["variants"]
        if not isinstance(listed, list) or not listed:
            raise OptionError(f"{source}: variants: expected a non-empty list of mappings (key: value)")
        for index, entry in enumerate(listed, 1):
            where = f"{source}: variant {index}"
            if not isinstance(entry, dict):
                raise OptionError(f"{where}: expected a mapping of overrides (key: value), got {entry!r}")
            name = entry.get("name")
            if "name" in entry and (not isinstance(name, str) or not NAME_PATTERN.fullmatch(name)):
                raise OptionError(
                    f"{where}: name {name!r}: expected letters, digits and . _ = , + - (at most 100, not starting "
                    f"with a punctuation mark): it names the variant's folder"
                )
            overrides = {}
            for key, item in entry.items():
                if key != "name":
                    key = _check_key(key, where, shared_options)
                    if key in overrides:
                        raise OptionError(f"{where}: {key} is given twice (with - and with _)")
                    overrides[key] = _override_value(key, item, where)
            specs.append((where, name, overrides))
    if "grid" in content:
        grid = content["grid"]
        if not isinstance(grid, dict) or not grid:
            raise OptionError(f"{source}: grid: expected a mapping of keys to non-empty lists of values")
        keys = [_check_key(key, f"{source}: grid", shared_options) for key in grid]
        if len(set(keys)) < len(keys):
            raise OptionError(f"{source}: grid: a key is given twice (with - and with _): {list(grid)}")
        for key, values in zip(keys, grid.values()):
            if not isinstance(values, list) or not values:
                raise OptionError(f"{source}: grid: {key}: expected a non-empty list of values, got {values!r}")
        columns = [
            [_override_value(key, item, f"{source}: grid") for item in values]
            for key, values in zip(keys, grid.values())
        ]
        for combination in itertools.product(*columns):
            specs.append((f"{source}: grid", None, dict(zip(keys, combination))))
    named = []
    seen = {}
    for where, name, overrides in specs:
        name = name or variant_name(overrides)
        if name in RESERVED_NAMES:
            raise OptionError(f"{where}: the name {name!r} is one of the sweep folder's own files; choose another")
        if name in seen:
            raise OptionError(
                f"{source}: two variants are named {name!r} ({seen[name]} and {where}); "
                f"give them distinct names (name: ...) or distinct values"
            )
        seen[name] = where
        named.append((name, overrides))
    return named


def resolve_variants(args, named, output_dir, check):
    """Variants with their own options: ``args`` with the overrides, folder ``output_dir/<name>``.

    ``check(args)`` validates a variant's options (train.py's checks). Two variants that would train
    the same model (identical resolved values) are an error.
    """
    variants = []
    by_values = {}
    for name, overrides in named:
        variant_args = argparse.Namespace(**copy.deepcopy(vars(args)))
        for key, value in overrides.items():
            setattr(variant_args, key, value)
        variant_args.output_dir = str(Path(output_dir) / name)
        variant_args.sweep = None  # each variant's config.yaml describes a single run (it resumes as one)
        try:
            check(variant_args)
        except OptionError as err:
            raise OptionError(f"sweep: variant {name}: {err}") from err
        values = tuple(getattr(variant_args, key) for key in OVERRIDABLE)
        if values in by_values:
            shown = ", ".join(f"{key} {format_value(value)}" for key, value in zip(OVERRIDABLE, values))
            raise OptionError(
                f"sweep: variants {by_values[values]} and {name} have identical values ({shown}): "
                f"they would train the same model"
            )
        by_values[values] = name
        variants.append(Variant(name, overrides, variant_args, Path(output_dir) / name))
    return variants


def read_manifest(output_dir):
    path = Path(output_dir) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        [(entry["name"], entry["overrides"]) for entry in manifest["variants"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise OptionError(f"{path}: not a sweep manifest written by train.py ({type(err).__name__}: {err})") from err
    return manifest


def plan_variants(args, check):
    """(variants, whether it is a sweep): the sweep of ``--sweep`` (or of the folder being resumed),
    else the single run itself, a variant without a name whose folder is --output-dir."""
    output_dir = Path(args.output_dir)
    manifest_path = output_dir / MANIFEST_FILE
    named = None
    if args.sweep is not None:
        named = read_sweep(args.sweep, set(vars(args)) - set(OVERRIDABLE))
    if manifest_path.is_file() and args.resume:
        manifest = read_manifest(output_dir)
        recorded = [(entry["name"], entry["overrides"]) for entry in manifest["variants"]]
        if named is not None and [(n, dict(o)) for n, o in named] != recorded:
            raise OptionError(
                f"--sweep: its variants differ from those of the sweep in {output_dir} "
                f"({', '.join(name for name, _ in recorded)}); resume with the same sweep, or leave --sweep out"
            )
        named = recorded
    elif named is None and manifest_path.is_file():
        raise OutputError(
            f"--output-dir {output_dir} holds a sweep ({MANIFEST_FILE}); pass --resume to continue it, "
            f"--sweep with --overwrite to replace it, or choose another --output-dir"
        )
    if named is None:
        return [Variant("", {}, args, output_dir)], False
    return resolve_variants(args, named, output_dir, check), True


def check_sweep_output(args, variants):
    """As train.py's check of --output-dir, for a sweep folder and its variants' folders."""
    output_dir = Path(args.output_dir)
    manifest_path = output_dir / MANIFEST_FILE
    if args.resume:
        if not manifest_path.is_file() or read_manifest(output_dir).get("position") is None:
            raise OptionError(
                f"--resume: {manifest_path} names no resume point yet; --output-dir must be the folder of the "
                f"sweep to continue (or leave out --resume to start a new sweep)"
            )
    elif not args.overwrite:
        existing = [
            str(path.relative_to(output_dir))
            for path in [manifest_path, *(output_dir / name for name in RUN_FILES)]
            + [variant.folder / name for variant in variants for name in RUN_FILES]
            if path.exists()
        ]
        if existing:
            raise OutputError(
                f"--output-dir {output_dir} holds runs ({', '.join(existing[:4])}{', ...' * (len(existing) > 4)}); "
                f"pass --resume to continue the sweep, --overwrite to replace it, or choose another --output-dir"
            )
    else:
        for folder in (output_dir, *(variant.folder for variant in variants)):
            for name in (*OVERWRITTEN_FILES, PENDING_RESUME_FILE, MANIFEST_FILE):
                path = folder / name
                for option, given in (("--backbone-weights", args.backbone_weights), ("--config", args.config)):
                    if given is not None and path.exists() and same_file(given, path):
                        raise OutputError(
                            f"--overwrite would delete {path}, which is the {option} of this sweep; "
                            f"copy it elsewhere first"
                        )
    return check_writable_dir(output_dir, "--output-dir")


def remove_overwritten(output_dir, variants):
    """--overwrite on a sweep: the manifest and each variant's run files, logs and TensorBoard."""
    (Path(output_dir) / MANIFEST_FILE).unlink(missing_ok=True)
    (Path(output_dir) / "train.log").unlink(missing_ok=True)
    for variant in variants:
        for name in (*OVERWRITTEN_FILES, PENDING_RESUME_FILE):
            (variant.folder / name).unlink(missing_ok=True)
        shutil.rmtree(variant.folder / "tensorboard", ignore_errors=True)
