"""One meaning per option (docs/troubleshooting.md#names-that-changed): every option of every command
has help that shows its default; options a --config may supply say they are required unless it
does, and are refused with one line when neither gives them; renamed options keep their old names
with a note; a run in COCO-Stuff-27's old folder is pointed at. tests/test_method.py holds the rule
of the recipes' folders."""

import argparse
import importlib
import os
import re
import subprocess

import pytest
import yaml
from test_user_start import PYTHON_COMMANDS, ROOT

from utils.config import parse_args_with_config

# Commands without a parser of their own: the one they run.
ALIASES = {"scripts/prepare_cocostuff.py": ("scripts.prepare_data", {"dataset": "cocostuff27"})}
CONFIG_REQUIRED = "required, unless --config gives it"


def parser_of(command):
    module_name, kwargs = ALIASES.get(command, (command.removesuffix(".py").replace("/", "."), {}))
    return importlib.import_module(module_name).build_parser(**kwargs)


def option_help(parser, action):
    """The help text of ``action`` exactly as ``--help`` prints it, before wrapping."""
    return parser._get_formatter()._expand_help(action)


def test_every_command_is_walked():
    assert {"train.py", "eval.py", "predict.py", "demo.py", "baseline_kmeans.py", "app.py"} <= set(PYTHON_COMMANDS)
    assert any(command.startswith("scripts/") for command in PYTHON_COMMANDS)
    assert any(command.startswith("benchmarks/") for command in PYTHON_COMMANDS)


@pytest.mark.parametrize("command", PYTHON_COMMANDS)
def test_every_option_has_help_that_shows_its_default(command):
    parser = parser_of(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue  # --help, and the options a command passes to its own child processes
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name}: no help"
        text = option_help(parser, action)
        if not action.option_strings or action.required:
            continue  # positional or required: it has no default
        if action.default is argparse.SUPPRESS:
            assert "old name of" in text, f"{command} {name}: hidden default, yet not an old name"
            continue
        if re.search(r"default:|[(;,] ?default\b|" + re.escape(CONFIG_REQUIRED), text, re.IGNORECASE):
            continue  # the help says it in its own words
        assert text.endswith(f"(default: {shown_default(action.default, action.nargs)})"), (
            f"{command} {name}: its help does not show its default {action.default!r}: {text!r}"
        )


def shown_default(default, nargs):
    if nargs == 0 and isinstance(default, bool):
        return "on" if default else "off"
    if default is None:
        return "none"
    return " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)


CONFIG_COMMANDS = {"train.py": ["--data-root"], "eval.py": ["--data-root", "--checkpoint"]}
CONFIG_COMMANDS["baseline_kmeans.py"] = ["--data-root"]


def test_every_command_with_a_config_is_checked():
    reading = {command for command in PYTHON_COMMANDS if "parse_args_with_config(" in (ROOT / command).read_text()}
    assert reading == set(CONFIG_COMMANDS)


@pytest.mark.parametrize("command", sorted(CONFIG_COMMANDS))
def test_options_a_config_may_give_are_required_unless_it_does(command, tmp_path, capsys):
    """--help marks them; neither flag nor config: one error line, exit 2; the config alone suffices."""
    parser = parser_of(command)
    marked = [action.option_strings[0] for action in parser._actions if CONFIG_REQUIRED in option_help(parser, action)]
    assert marked == CONFIG_COMMANDS[command]
    assert not [action.dest for action in parser._actions if action.required], "a config could not give it"
    values = {option.removeprefix("--").replace("-", "_"): str(tmp_path / "given") for option in marked}
    if command == "eval.py":
        values["checkpoint"] = [values["checkpoint"]]
    for missing in values:
        config = tmp_path / f"without_{missing}.yaml"
        config.write_text(yaml.safe_dump({key: value for key, value in values.items() if key != missing}))
        with pytest.raises(SystemExit) as stopped:
            parse_args_with_config(parser_of(command), ["--config", str(config)])
        line = capsys.readouterr().err.strip()
        assert stopped.value.code == 2 and "\n" not in line, line
        assert line.startswith(f"error: --{missing.replace('_', '-')} is required"), line
    config = tmp_path / "all.yaml"
    config.write_text(yaml.safe_dump(values))
    args = parse_args_with_config(parser_of(command), ["--config", str(config)])
    assert all(getattr(args, key) == value for key, value in values.items())


# (command, old name, new name, a value): old command lines keep working, with a note.
RENAMED = [
    ("eval.py", "--patch-size", "--expect-patch-size", "8"),
    ("predict.py", "--patch-size", "--expect-patch-size", "8"),
    ("app.py", "--gallery-images", "--sample", "5"),
    ("scripts/gpu_check.py", "--output", "--markdown", "report.md"),
]


@pytest.mark.parametrize(("command", "old", "new", "value"), RENAMED)
def test_old_option_names_still_work_with_a_note(command, old, new, value, capsys):
    parser = parser_of(command)
    new_action = parser._option_string_actions[new]
    required = [word for action in parser._actions if action.required for word in (action.option_strings[0], "x")]
    by_old = parser.parse_args([*required, old, value])
    note = capsys.readouterr().err.strip()
    assert note.startswith(f"note: {old} is now {new} (") and "\n" not in note, note
    assert getattr(by_old, new_action.dest) == getattr(parser.parse_args([*required, new, value]), new_action.dest)
    assert not capsys.readouterr().err, "the new name takes no note"
    assert f"old name of {new}" in option_help(parser, parser._option_string_actions[old])


def test_train_sh_names_the_old_folder_of_a_coco27_run(tmp_path):
    """COCO-Stuff-27's recipes trained into outputs/train_coco27_<ARCH> before one rule named every
    recipe's folder: a run there is pointed at, and the new folder is used."""
    (tmp_path / "outputs" / "train_coco27_vits16").mkdir(parents=True)
    env = {**os.environ, "PYTHON": "echo", "DATA_ROOT": "data", "NPROC": "1", "NNODES": "1"}
    done = subprocess.run(
        ["bash", str(ROOT / "train.sh"), "cocostuff27", "vits16"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "--output-dir" not in done.stdout, done.stdout + done.stderr
    assert done.stderr.startswith("note: outputs/train_coco27_vits16 is the old name of this recipe's folder"), (
        done.stderr
    )
    assert "outputs/train_cocostuff27_vits16" in done.stderr
