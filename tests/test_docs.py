"""Documentation that cannot drift: every command the docs show is parsed by the code it runs.

Every fenced shell block (bash, sh, shell, console, and unlabelled blocks that hold commands) and
every inline code span that starts a command, in README.md, checkpoints/README.md and docs/*.md,
is read line by line (backslash continuations joined, environment assignments and prompts
stripped). A line that runs one of the project's Python entry points is parsed by that entry
point's own parser (its ``build_parser()``; with ``utils.config.parse_args_with_config`` when it
reads a ``--config`` YAML, so the file's keys are checked too): a renamed or removed flag fails.
Synopsis lines are expanded into concrete commands rather than skipped: every alternative
(``sliding|resize320|center320``, ``[--resume | --overwrite]``), optional groups absent and
present (nested ones too), placeholders (``DIR``, ``FILE``, ``N``, ...) replaced by a value of the
type the option takes. ``bash train.sh DATASET ARCH`` / ``val.sh`` / ``train_coco27.sh`` /
``val_coco27.sh`` lines must find their recipe and checkpoint naming, and their extra flags are
parsed with the config the script would pass. Nothing is executed except ``bash train.sh`` without
arguments, whose list of recipes is checked against configs/ and parsed recipe by recipe.

``pytest -s tests/test_docs.py`` prints what was parsed and what was skipped, and why.
"""

import argparse
import contextlib
import functools
import importlib
import inspect
import io
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from data.registry import DATASET_NAMES
from modules.backbones import BACKBONES, SPECS, resolve_backbone_name
from utils.config import parse_args_with_config

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", ROOT / "checkpoints" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LABELS = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = {"python", "python3", "torchrun", "bash", "sh", "pip", "pip3"}
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# The config a "--config FILE" placeholder stands for, by entry point: one that exists and fits.
CONFIG_FOR = {"train": "configs/train_cocostuff27_vits16.yaml"}
DEFAULT_CONFIG = "configs/eval_coco27_peers.yaml"
DUMMY_DATA_ROOT = "docs-dummy/data"
# Environment variables the Python side reads (the shell scripts' own are read from their text).
PYTHON_ENV = {"IDDC_DEBUG", "HTTPS_PROXY", "HTTP_PROXY", "CHECKPOINT_DIR", "CUDA_VISIBLE_DEVICES"}
MIN_PARSED_LINES = 40  # the docs hold far more; fewer means the extraction broke


# ----------------------------------------------------------------------------- reading the docs


@dataclass
class CommandLine:
    where: str  # file:line
    text: str  # continuations joined, prompt and comment removed


def _strip_comment(line):
    """The line without a shell comment (a # at the start or after a blank, outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def _first_word(text):
    words = text.split()
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    return words[0] if words else ""


def _looks_like_command(text):
    word = _first_word(text)
    return word in COMMAND_WORDS or word.endswith((".sh", ".py"))


def _joined(numbered_lines):
    """(line number, text) with backslash continuations joined."""
    pending, start = "", None
    for number, line in numbered_lines:
        if start is None:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending, start = "", None
    if start is not None:
        yield start, pending


def doc_commands(path):
    """Every command line of a markdown file: fenced shell blocks and inline code spans."""
    name = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    commands, prose = [], []
    index = 0
    while index < len(lines):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", lines[index])
        if not fence:
            prose.append((index + 1, lines[index]))
            index += 1
            continue
        marker, label = fence.group(1), fence.group(2).lower()
        body = []
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(marker):
            body.append((index + 1, lines[index]))
            index += 1
        index += 1  # the closing fence
        if label not in SHELL_LABELS and label != "":
            continue
        if label == "console":
            body = [(number, line.strip()[2:]) for number, line in body if line.strip().startswith("$ ")]
        for number, text in _joined(body):
            text = _strip_comment(text.strip().removeprefix("$ "))
            if not text or (label == "" and not _looks_like_command(text)):
                continue
            commands.append(CommandLine(f"{name}:{number}", text))
    for number, line in prose:
        for span in re.findall(r"`([^`]+)`", line):
            if _first_word(span) in {"python", "python3", "torchrun", "bash"} and len(span.split()) > 1:
                commands.append(CommandLine(f"{name}:{number}", span.strip()))
    return commands


def python_examples():
    """(where, code) of every fenced Python block."""
    examples = []
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text[: match.start()].count("\n") + 1
            examples.append((f"{path.relative_to(ROOT).as_posix()}:{line}", match.group(1)))
    return examples


# ----------------------------------------------------------------------------- synopsis expansion


def _synopsis_tokens(text):
    """Words, "[", "]" and spaced "|" (an alternative between sequences), quotes kept whole."""
    tokens, word, quote = [], "", None
    for char in text:
        if quote:
            word += char
            quote = None if char == quote else quote
        elif char in "'\"":
            word += char
            quote = char
        elif char in "[]" or char.isspace():
            if word:
                tokens.append(word)
                word = ""
            if char in "[]":
                tokens.append(char)
        else:
            word += char
    if word:
        tokens.append(word)
    return tokens


@dataclass
class Word:
    """A word of a synopsis, with its alternatives ("16|8": two); ``path`` leads to it: the
    (group, branch) pairs of the optional groups it sits in."""

    choices: list
    path: tuple


@dataclass
class Group:
    """An optional group ``[...]``, whose branches are separated by a spaced "|"."""

    branches: list
    path: tuple


def _parse(tokens, position, group):
    """The branches of ``group`` (None: the whole line) read from ``position``, and the position
    of the "]" that closes it."""
    outer = () if group is None else group.path
    branches, sequence = [], []

    def path():
        return outer if group is None else (*outer, (id(group), len(branches)))

    while position < len(tokens):
        token = tokens[position]
        if token == "]":
            if group is None:
                raise ValueError("unbalanced ]")
            branches.append(sequence)
            return branches, position
        if token == "|" and group is not None:
            branches.append(sequence)
            sequence = []
        elif token == "[":
            inner = Group([], path())
            inner.branches, position = _parse(tokens, position + 1, inner)
            sequence.append(inner)
        elif token != "...":  # "[PATH ...]": more of the same
            # An unspaced "|" inside a word separates alternative words ("16|8", "--flip|--no-flip").
            split = "|" in token and token != "|" and not token.startswith(("'", '"'))
            sequence.append(Word(token.split("|") if split else [token], path()))
        position += 1
    if group is not None:
        raise ValueError("unbalanced [")
    branches.append(sequence)
    return branches, position


def _nodes(sequence):
    for node in sequence:
        yield node
        if isinstance(node, Group):
            for branch in node.branches:
                yield from _nodes(branch)


def _render(sequence, selection, present):
    words = []
    for node in sequence:
        if isinstance(node, Word):
            words.append(node.choices[selection.get(id(node), 0)])
        elif present:
            words.extend(_render(node.branches[selection.get(id(node), 0)], selection, present))
    return words


def expand_synopsis(text):
    """Concrete commands of a synopsis line: every optional group absent; every group present
    (nested ones too) with first alternatives; then, one at a time, each other alternative of
    each alternation (the groups around it present, on the branch that holds it). Every
    alternative and every group is thereby in at least one command."""
    (sequence,), _ = _parse(_synopsis_tokens(text), 0, None)
    variants = [_render(sequence, {}, present=False), _render(sequence, {}, present=True)]
    for node in _nodes(sequence):
        count = len(node.choices) if isinstance(node, Word) else len(node.branches)
        for choice in range(1, count):
            selection = dict(node.path)
            selection[id(node)] = choice
            variants.append(_render(sequence, selection, present=True))
    unique = []
    for words in variants:
        if words not in unique:
            unique.append(words)
    return [" ".join(words) for words in unique]


# ----------------------------------------------------------------------------- entry points


class _ParserCaptured(BaseException):
    """Carries the parser out of a ``main()`` that builds it inline (BaseException: the entry
    points' error handling catches Exception)."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


MODULES = {}


def entry_module(name):
    if name not in MODULES:
        MODULES[name] = importlib.import_module(name)
    return MODULES[name]


def fresh_parser(module_name, report):
    """A new parser of the entry point: its build_parser(), else the one its main() builds (caught
    as main() starts parsing; nothing else of main() runs)."""
    module = entry_module(module_name)
    if hasattr(module, "build_parser"):
        return module.build_parser()
    report.without_build_parser.add(module_name)
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        raise _ParserCaptured(self)

    argparse.ArgumentParser.parse_args = capture
    try:
        main = inspect.unwrap(module.main)
        main([]) if inspect.signature(main).parameters else main()
    except _ParserCaptured as captured:
        return captured.parser
    finally:
        argparse.ArgumentParser.parse_args = original
    raise AssertionError(f"{module_name}: main() finished without parsing its arguments")


class _Refused(Exception):
    """A parser's error(), raised instead of printed (the message is what a user would read)."""


def _refuse(message):
    raise _Refused(message)


def parse_with(module_name, argv, report):
    """None when the entry point's parser accepts ``argv``, else its error message."""
    parser = fresh_parser(module_name, report)
    parser.error = _refuse  # the message without the exit (and the output flushing) of a real run
    reads_config = "--config" in parser._option_string_actions
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            if reads_config:
                parse_args_with_config(parser, argv)
            else:
                parser.parse_args(argv)
    except _Refused as refused:
        return f"error: {refused}"
    except SystemExit as exit_:  # --help
        if exit_.code not in (0, None):
            return f"exit {exit_.code}"
    return None


def module_of_script(script):
    """The module name of a project script, None when the project has no such file."""
    path = (ROOT / script).resolve()
    if not path.is_file() or not path.is_relative_to(ROOT):
        return None
    return path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")


def placeholder_value(token, tokens, index, parser, module_name):
    """A value of the type the option (or positional) that consumes placeholder ``token`` takes."""
    action = None
    before = index - 1
    while before >= 0 and PLACEHOLDER.match(tokens[before]):
        before -= 1
    if before >= 0 and tokens[before].startswith("-"):
        action = parser._option_string_actions.get(tokens[before])
    elif not any(previous.startswith("-") for previous in tokens[:index]):
        positionals = [a for a in parser._actions if not a.option_strings]
        action = positionals[min(index, len(positionals) - 1)] if positionals else None
    if action is not None and action.dest == "config":
        return CONFIG_FOR.get(module_name, DEFAULT_CONFIG)
    if action is not None and action.choices:
        return str(list(action.choices)[0])
    if token == "URL":
        return "http://localhost:3128"
    if action is not None and action.type not in (None, str, Path):
        for candidate in ("2", "0.5", f"docs-dummy/{token.lower()}"):
            try:
                action.type(candidate)
                return candidate
            except (ValueError, TypeError, argparse.ArgumentTypeError):
                continue
    return f"docs-dummy/{token.lower()}"


LOOKUP_PARSERS = {}


def concrete(tokens, module_name, report):
    """``tokens`` with placeholders replaced, seen by ``module_name``'s parser."""
    if module_name not in LOOKUP_PARSERS:  # only read: parsing may change a parser's defaults
        LOOKUP_PARSERS[module_name] = fresh_parser(module_name, report)
    parser = LOOKUP_PARSERS[module_name]
    return [
        placeholder_value(token, tokens, index, parser, module_name) if PLACEHOLDER.match(token) else token
        for index, token in enumerate(tokens)
    ]


# ----------------------------------------------------------------------------- the shell scripts


def short_arch(arch):
    """train.sh's rule: dino_vits16 and vits16 are the recipe name vits16; other names stay."""
    arch = arch.removeprefix("dino_vit")
    return "vit" + arch if re.match(r"[sb]\d", arch) else arch


def full_backbone(arch):
    return "dino_" + arch if re.fullmatch(r"vit[sb]\d+", arch) else arch


@functools.cache
def listed_recipes():
    """(dataset, arch) pairs of `bash train.sh`'s usage, the one command this test runs."""
    result = subprocess.run(["bash", str(ROOT / "train.sh")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"bash train.sh without arguments: exit {result.returncode}, expected 0"
    assert not result.stderr, f"bash train.sh lists the recipes as a normal answer, on stdout: {result.stderr!r}"
    usage = result.stdout.strip().splitlines()[-1]
    assert "one of:" in usage, f"bash train.sh: cannot find the recipes in its usage: {usage!r}"
    return tuple(tuple(pair.split()) for pair in usage.split("one of:", 1)[1].split(","))


def common_sh_names(variable):
    """A list of names scripts/common.sh defines (dataset_names, arch_names) for train.sh and val.sh."""
    text = (ROOT / "scripts" / "common.sh").read_text()
    parts = re.findall(rf'^{variable}\+?="([^"]*)"', text, re.M)
    assert parts, f"scripts/common.sh: cannot find {variable}"
    return " ".join(parts).split()


def script_env(script):
    """Environment variables a shell script reads, with scripts/common.sh and the scripts it starts."""
    text = (ROOT / script).read_text()
    for started in re.findall(r'exec bash "\$here/(\w+\.sh)"', text):
        text += (ROOT / started).read_text()
    if "scripts/common.sh" in text:
        text += (ROOT / "scripts" / "common.sh").read_text()
    return set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text)) | PYTHON_ENV


@dataclass
class Report:
    parsed: list = field(default_factory=list)  # (where, number of concrete commands)
    skipped: list = field(default_factory=list)  # (where, command, reason)
    failures: list = field(default_factory=list)  # (where, command, message)
    without_build_parser: set = field(default_factory=set)

    def summary(self):
        commands = sum(count for _, count in self.parsed)
        return (
            f"parsed {len(self.parsed)} command lines of the docs ({commands} concrete commands after expanding "
            f"synopses), skipped {len(self.skipped)}, {len(self.failures)} failed"
        )


def script_arches(script):
    """(default, every ARCH) a COCO-Stuff-27 script takes as its optional first argument."""
    text = (ROOT / script).read_text()
    return re.search(r"^arch=(\w+)", text, re.M).group(1), re.findall(r'"\$1" == (\w+)', text)


def check_script(script, args, env):
    """The (entry point, argv) runs of one `bash SCRIPT ARGS` line, or a failure message; None for a
    script that runs no entry point. A DATASET ARCH placeholder pair stands for a listed recipe."""
    unknown_env = sorted(set(env) - script_env(script))
    if unknown_env:
        return f"{script} reads no variable {', '.join(unknown_env)}"
    name = Path(script).name
    if name in ("train.sh", "val.sh"):
        if not args and name == "train.sh":
            return []  # lists the recipes: test_every_listed_recipe_parses_with_its_config
        if len(args) < 2:
            return f"{name} needs DATASET ARCH"
        dataset, arch = args[:2]
        templated = PLACEHOLDER.match(dataset) and PLACEHOLDER.match(arch)
    if name == "train.sh":
        dataset, arch = listed_recipes()[0] if templated else (dataset, short_arch(arch))
        config = f"configs/train_{dataset}_{arch}.yaml"
        if not (ROOT / config).is_file():
            return f"train.sh {args[0]} {args[1]}: no recipe {config}"
        return [("train", ["--config", config, "--dataset", dataset, "--data-root", DUMMY_DATA_ROOT, *args[2:]])]
    if name == "val.sh":
        dataset, arch = listed_recipes()[0] if templated else (dataset, short_arch(arch))
        if dataset not in common_sh_names("dataset_names") or arch not in common_sh_names("arch_names"):
            return f"val.sh {dataset} {arch}: not a dataset and an arch val.sh accepts"
        patch_size = re.search(r"vit[a-z]+(\d+)", arch).group(1)
        fixed = ["--dataset", dataset, "--checkpoint", f"checkpoints/{dataset}_{arch}.pth"]
        fixed += ["--expect-patch-size", patch_size, "--output-json", f"outputs/val_{dataset}_{arch}.json"]
        return [("eval", [*fixed, "--data-root", DUMMY_DATA_ROOT, *args[2:]])]
    if name in ("train_coco27.sh", "val_coco27.sh"):
        default, arches = script_arches(script)
        arch, rest = (args[0], args[1:]) if args and args[0] in arches else (default, args)
        if name == "train_coco27.sh":
            return [
                ("train", ["--config", f"configs/train_cocostuff27_{arch}.yaml", "--data-root", DUMMY_DATA_ROOT, *rest])
            ]
        fixed = [
            "--checkpoint",
            f"checkpoints/cocostuff27_{arch}.pth",
            "--expect-patch-size",
            arch.removeprefix("vits"),
        ]
        return [("eval", [*fixed, "--data-root", DUMMY_DATA_ROOT, "--output-json", "out.json", *rest])]
    return None


def runs_of(tokens):
    """(runs, None): the (entry point, argv) runs of one concrete command; (message, None): a doc
    error; (None, reason): not a command of the project's entry points, skipped."""
    env = {}
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    if not tokens:
        return None, "only environment assignments"
    program = tokens[0]
    if program in ("python", "python3") and tokens[1:2] == ["-m"] and len(tokens) > 2:
        if tokens[2] == "torch.distributed.run":
            tokens = ["torchrun", *tokens[3:]]
        elif module_of_script(Path(*tokens[2].split(".")).with_suffix(".py")):
            return [(tokens[2], tokens[3:])], None
        else:
            return None, f"python -m {tokens[2]}: not a project entry point"
    elif program in ("python", "python3"):
        if len(tokens) < 2 or not tokens[1].endswith(".py"):
            return None, "python without a project script"
        module = module_of_script(tokens[1])
        return ([(module, tokens[2:])], None) if module else (f"{tokens[1]}: no such file in the project", None)
    if tokens[0] == "torchrun":
        scripts = [index for index, token in enumerate(tokens) if token.endswith(".py")]
        if not scripts:
            return None, "torchrun options without a script"
        module = module_of_script(tokens[scripts[0]])
        if not module:
            return f"{tokens[scripts[0]]}: no such file in the project", None
        return [(module, tokens[scripts[0] + 1 :])], None
    if program in ("bash", "sh") and len(tokens) > 1 and tokens[1].endswith(".sh"):
        script, args = tokens[1], tokens[2:]
    elif program.endswith(".sh"):
        script, args = program, tokens[1:]
    else:
        return None, f"{program}: not a project command"
    if not (ROOT / script).is_file():
        return f"{script}: no such script in the project", None
    runs = check_script(script, args, env)
    return (runs, None) if runs is not None else (None, f"{script}: runs no entry point")


def split_commands(text):
    """The commands of a shell line: split at &&, ||, ; and pipes outside brackets and quotes."""
    parts, current, depth, quote = [], "", 0, None
    index = 0
    while index < len(text):
        char = text[index]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif depth == 0 and text.startswith(("&&", "||"), index):
            parts.append(current)
            current, index = "", index + 2
            continue
        elif depth == 0 and (char == ";" or text[index - 1 : index + 2] == " | "):
            parts.append(current)
            current, index = "", index + 1
            continue
        current += char
        index += 1
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def check_line(line, report):
    """Parse every concrete command of one doc line; record it as parsed, skipped or failed."""
    if "<" in line.text and ">" in line.text:
        report.skipped.append((line.where, line.text, "a templated path (<...>)"))
        return
    concrete_count, skipped_reasons = 0, []
    text = re.sub(r"\[(more )?\S+\.py flags\]", "", line.text)  # "[train.py flags]": any of them
    for command in split_commands(text):
        try:
            variants = expand_synopsis(command)
        except ValueError as err:
            report.failures.append((line.where, line.text, f"unreadable synopsis: {err}"))
            return
        for variant in variants:
            runs, reason = runs_of(shlex.split(variant))
            if reason is not None:
                skipped_reasons.append(reason)
                continue
            if isinstance(runs, str):
                report.failures.append((line.where, variant, runs))
                return
            for module_name, argv in runs:
                argv = concrete(argv, module_name, report)
                error = parse_with(module_name, argv, report)
                if error is not None:
                    report.failures.append((line.where, f"{module_name}: {shlex.join(argv)}", error))
                    return
                concrete_count += 1
            if not runs:
                concrete_count += 1  # `bash train.sh` alone: lists the recipes
    if concrete_count:
        report.parsed.append((line.where, concrete_count))
    else:
        report.skipped.append((line.where, line.text, "; ".join(dict.fromkeys(skipped_reasons))))


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def docs_report():
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # --config paths are relative to the project, as users run them
        report = Report()
        for path in DOC_FILES:
            for line in doc_commands(path):
                check_line(line, report)
    return report


def test_doc_commands_parse_with_their_entry_points(docs_report):
    report = docs_report
    print(f"\ndocs: {report.summary()}")
    for where, text, reason in report.skipped:
        print(f"  skipped {where}: {text}  -- {reason}")
    if report.without_build_parser:
        print(f"  parsers taken from main() (no build_parser()): {', '.join(sorted(report.without_build_parser))}")
    failures = "\n".join(f"  {where}: {command}\n    -> {message}" for where, command, message in report.failures)
    assert not report.failures, f"{report.summary()}:\n{failures}"
    assert len(report.parsed) >= MIN_PARSED_LINES, f"{report.summary()}: expected at least {MIN_PARSED_LINES}"


def test_every_listed_recipe_parses_with_its_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    recipes = listed_recipes()
    configs = sorted(path.name for path in (ROOT / "configs").glob("train_*.yaml"))
    assert sorted(f"train_{dataset}_{arch}.yaml" for dataset, arch in recipes) == configs
    train = entry_module("train")
    for dataset, arch in recipes:
        config = f"configs/train_{dataset}_{arch}.yaml"
        args = parse_args_with_config(
            train.build_parser(), ["--config", config, "--dataset", dataset, "--data-root", "data"]
        )
        assert dataset in DATASET_NAMES, f"{config}: {dataset} is not a dataset of data/registry.py"
        assert yaml.safe_load((ROOT / config).read_text()).get("dataset", dataset) == dataset, config
        assert resolve_backbone_name(args.backbone, args.patch_size) == full_backbone(arch), config
        assert full_backbone(arch) in BACKBONES
    print(f"\ntrain.sh lists {len(recipes)} recipes; each parsed by train.py's parser with its config")


def test_shell_scripts_know_every_dataset_and_backbone():
    """train.sh and val.sh take the names the code knows (their lists live in scripts/common.sh), and
    val.sh's --expect-patch-size, read from ARCH, is the backbone's."""
    assert common_sh_names("dataset_names") == list(DATASET_NAMES)
    arches = common_sh_names("arch_names")
    assert [full_backbone(arch) for arch in arches] == list(BACKBONES)
    for arch in arches:
        assert int(re.search(r"vit[a-z]+(\d+)", arch).group(1)) == SPECS[full_backbone(arch)].patch_size, arch
    assert {recipe for recipe in listed_recipes()} <= {(d, a) for d in DATASET_NAMES for a in arches}


def test_python_examples_import_what_they_show():
    examples = python_examples()
    assert examples
    hub = entry_module("hubconf")
    for where, code in examples:
        imports = [line for line in code.splitlines() if re.match(r"(from \S+ )?import \S", line)]
        exec("\n".join(imports), {})  # the docs' own import lines, nothing else of the example
        for entry in re.findall(r'torch\.hub\.load\([^,]+,\s*"(\w+)"', code):
            assert callable(getattr(hub, entry, None)), f"{where}: hubconf.py has no entry point {entry}"


def _anchors(path):
    """GitHub's anchors of a markdown file's headings."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_links_point_to_pages_that_exist():
    pages = {path.name for path in (ROOT / "docs").glob("*.md")}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250, "README.md is a front page: at most 250 lines"
    linked = set(re.findall(r"\(docs/([\w.-]+\.md)[#)]", readme))
    assert pages <= linked, f"README.md links no page {sorted(pages - linked)}"
    for path in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if re.match(r"\w+://", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked_path = (path.parent / file_part).resolve() if file_part else path
            assert linked_path.exists(), f"{path.relative_to(ROOT)}: link to {target}, which does not exist"
            if anchor and linked_path.suffix == ".md":
                assert anchor in _anchors(linked_path), f"{path.relative_to(ROOT)}: no heading for #{anchor}"


def test_synopsis_expansion_covers_every_alternative_and_group():
    variants = expand_synopsis(
        "python eval.py [--protocol sliding|resize320] [--crf [--crf-workers N]] [--a | --b X|Y]"
    )
    assert variants[0] == "python eval.py"
    words = {word for variant in variants for word in variant.split()}
    assert {"sliding", "resize320", "--crf", "--crf-workers", "N", "--a", "--b", "X", "Y"} <= words
    assert not any("--a" in variant and "--b" in variant for variant in variants)  # alternatives, never both


def test_a_flag_the_parser_does_not_know_fails(monkeypatch):
    monkeypatch.chdir(ROOT)
    report = Report()
    for text in (
        "python eval.py --data-root DIR --checkpoint FILE --prot sliding",  # an abbreviation
        "python eval.py --data-root DIR --checkpoint FILE [--protocol sliding|resize320|slidng]",
        "DATA_ROOT=DIR bash train.sh cocostuff27 vits16 --epoch 3",
        "bash train.sh cocostuff27 vitb16",  # no such recipe
        "NPROCS=4 bash train.sh cocostuff27 vits16",  # no such variable
    ):
        check_line(CommandLine("test", text), report)
    assert len(report.failures) == 5, report.failures


def test_ci_runs_the_readme_test_command():
    """CI (.ci/run) runs the test command README.md gives, with the same options."""
    readme = [line.split("#")[0].split() for line in (ROOT / "README.md").read_text().splitlines()]
    ci = [line.split() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    shown = [words[3:] for words in readme if words[1:3] == ["-m", "pytest"]]
    run = [words[3:] for words in ci if words[1:3] == ["-m", "pytest"]]
    assert len(shown) == 1 and run == shown, (shown, run)
