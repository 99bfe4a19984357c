"""argparse with a YAML file as defaults: the file sets defaults, flags on the command line win."""

from pathlib import Path

import yaml

from utils.cli import ArgumentParser
from utils.files import read_yaml, write_text_atomic


def parse_args_with_config(parser, argv=None):
    """Parse ``argv`` with ``--config FILE``'s values as defaults; unknown YAML keys are an error, and
    so is an option marked ``required_unless_config`` that neither gives."""
    pre = ArgumentParser(add_help=False, debug_flag=False)
    pre.add_argument("--config", default=parser.get_default("config"))
    known, _ = pre.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        if not path.is_file():
            parser.error(f"--config {path}: no such file")
        values = read_yaml(path, f"--config {path}") or {}
        if not isinstance(values, dict):
            parser.error(f"--config {path}: expected a mapping of option names to values")
        options = {action.dest for action in parser._actions}
        unknown = sorted(key for key in values if key.replace("-", "_") not in options)
        if unknown:
            parser.error(f"--config {path}: unknown keys {unknown}; valid keys are the long options, with _ for -")
        values = {key.replace("-", "_"): value for key, value in values.items()}
        for action in parser._actions:
            if action.dest in values:
                _check_config_value(parser, path, action, values[action.dest])
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    for action in parser._actions:
        if getattr(action, "required_unless_config", False) and getattr(args, action.dest) is None:
            parser.error(
                f"{action.option_strings[0]} is required (on the command line, or as {action.dest}: in --config)"
            )
    return args


def _check_config_value(parser, path, action, value):
    """What argparse checks for a flag, checked for a YAML value too (argparse skips the choices
    and types of defaults that are not strings)."""
    where = f"--config {path}: {action.dest}"
    if value is None:
        return
    if action.nargs == 0:  # store_true, --flag/--no-flag
        if not isinstance(value, bool):
            parser.error(f"{where}: expected true or false, got {value!r}")
        return
    if action.nargs not in (None, "?") and not isinstance(value, (list, tuple)):
        parser.error(f"{where}: expected a list ({action.nargs} values), got {value!r}")
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, str) and action.type is not None:
            try:
                item = action.type(item)
            except (TypeError, ValueError):
                parser.error(f"{where}: {item!r} is not a valid value")
        elif action.type in (int, float):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or action.type(item) != item:
                parser.error(f"{where}: expected {'an integer' if action.type is int else 'a number'}, got {item!r}")
        if action.choices is not None and item not in action.choices:
            parser.error(f"{where}: {item!r} is not one of {list(action.choices)}")


def save_config(args, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(vars(args), sort_keys=True))
