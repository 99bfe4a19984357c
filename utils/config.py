"""argparse with a YAML file as defaults: the file sets defaults, flags on the command line win."""
import argparse
from pathlib import Path

import yaml


def parse_args_with_config(parser, argv=None):
    """Parse ``argv`` with ``--config FILE``'s values as defaults; unknown YAML keys are an error."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=parser.get_default("config"))
    known, _ = pre.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            parser.error(f"--config {path}: no such file")
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            parser.error(f"--config {path}: expected a mapping of option names to values")
        options = {action.dest for action in parser._actions}
        unknown = sorted(key for key in values if key.replace("-", "_") not in options)
        if unknown:
            parser.error(f"--config {path}: unknown keys {unknown}; valid keys are the long options, with _ for -")
        parser.set_defaults(**{key.replace("-", "_"): value for key, value in values.items()})
    return parser.parse_args(argv)


def save_config(args, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(vars(args), f, sort_keys=True)
