"""docs/method.md and what cites it, and statements of the docs that a test can hold: the paper's
recipes against the method's table, citations that resolve, recipe values the paper does not give
marked `# untuned`, recipe output folders that never collide, and val.sh's advice naming recipes
that exist."""

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.test_docs import _anchors, common_sh_names, listed_recipes, short_arch

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
PAPER_RECIPES = {"vits16": "configs/train_cocostuff27_vits16.yaml", "vits8": "configs/train_cocostuff27_vits8.yaml"}
# The training hyper-parameters a recipe sets; the loss's three negative shifts belong to the method itself.
HYPER_PARAMETERS = (
    "epochs",
    "batch_size",
    "lr",
    "probe_lr",
    "lr_power",
    "pos_threshold",
    "neg_threshold",
    "neg_weight",
    "balance_weight",
    "seed",
)
TEXT_SUFFIXES = {".py", ".md", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini"}


def method_recipe_table():
    """{column arch: {key: value}} of the table under '## The paper's recipes', values read as YAML."""
    section = METHOD.read_text(encoding="utf-8").split("## The paper's recipes", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    header = next(line for line in section.splitlines() if line.startswith("| key |"))
    arches = re.findall(r"`cocostuff27 (\w+)`", header)
    table = {arch: {} for arch in arches}
    for row in rows:
        cells = [cell.strip().strip("`") for cell in row.strip("|").split("|")]
        for arch, cell in zip(arches, cells[1 : 1 + len(arches)]):
            table[arch][cells[0]] = yaml.safe_load(cell)
    return table


def test_the_paper_recipes_hold_every_value_of_the_method_table():
    table = method_recipe_table()
    assert set(table) == set(PAPER_RECIPES), f"docs/method.md's recipe table has columns {sorted(table)}"
    for arch, config in PAPER_RECIPES.items():
        recipe = yaml.safe_load((ROOT / config).read_text())
        assert recipe == table[arch], f"{config} differs from docs/method.md#the-papers-recipes"


def project_text_files():
    """The project's own text files (tracked or new, ignored ones left out); tests/golden is data."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        path = ROOT / name
        if path.suffix in TEXT_SUFFIXES and not name.startswith("tests/golden/") and path.is_file():
            yield name, path.read_text(encoding="utf-8", errors="replace")


def test_nothing_cites_a_spec_the_repository_does_not_hold():
    citing = [
        f"{name}:{number}: {line.strip()}"
        for name, text in project_text_files()
        for number, line in enumerate(text.splitlines(), 1)
        if re.search(r"\bSPEC\b", line)
    ]
    assert not citing, "cite docs/*.md, not a document the repository does not hold:\n" + "\n".join(citing)


def test_every_cited_docs_anchor_exists():
    cited = 0
    for name, text in project_text_files():
        for page, anchor in re.findall(r"docs/([\w.-]+\.md)#([\w-]+)", text):
            cited += 1
            path = ROOT / "docs" / page
            assert path.is_file(), f"{name} cites docs/{page}, which does not exist"
            assert anchor in _anchors(path), f"{name} cites docs/{page}#{anchor}, which no heading gives"
    assert cited >= 10, f"found only {cited} docs anchors cited: the search broke"


def test_recipe_values_the_paper_does_not_give_are_marked_untuned():
    """The paper gives every value of the two COCO-Stuff-27 recipes and the loss's four values of
    COCO-Stuff-171 and Cityscapes-27 (marked `(paper)`); every other hyper-parameter is ours."""
    for config in sorted((ROOT / "configs").glob("train_*.yaml")):
        if str(config.relative_to(ROOT)) in PAPER_RECIPES.values():
            continue
        lines = {line.split(":", 1)[0]: line for line in config.read_text().splitlines() if ":" in line}
        for key in HYPER_PARAMETERS:
            assert key in lines, f"{config.name} sets no {key}"
            comment = lines[key].partition("#")[2]
            assert "untuned" in comment or "(paper)" in comment, f"{config.name}: {key} lacks its mark"


def train_sh_output_dirs(runs):
    """The folder each `bash train.sh DATASET ARCH [--backbone NAME]` of ``runs`` ((dataset, arch,
    backbone or None) triples) trains into, read off the command it starts; one bash for all."""
    env = {
        **os.environ,
        "PYTHON": "echo",
        "DATA_ROOT": "data",
        "NPROC": "1",
        "NNODES": "1",
        "TRAIN_SH": str(ROOT / "train.sh"),
    }
    loop = 'while read -r data arch backbone; do bash "$TRAIN_SH" $data $arch ${backbone:+--backbone $backbone}; done'
    lines = "".join(f"{dataset} {arch} {backbone or ''}\n" for dataset, arch, backbone in runs)
    result = subprocess.run(["bash", "-c", loop], input=lines, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and not result.stderr, result.stderr
    folders = []
    for command in result.stdout.splitlines():
        argv = command.split()
        given = [argv[i + 1] for i, word in enumerate(argv) if word == "--output-dir"]
        config = Path(argv[argv.index("--config") + 1])
        folders.append(given[-1] if given else yaml.safe_load(config.read_text())["output_dir"])
    assert len(folders) == len(runs), result.stdout
    return folders


def test_recipe_folders_follow_one_rule_and_never_collide():
    """Every recipe trains into outputs/train_<DATASET>_<ARCH>, its own file's name, and with any
    other `--backbone` into outputs/train_<DATASET>_<BACKBONE>_with_<ARCH>_recipe (docs/training.md):
    no two runs share a folder."""
    runs = [
        (dataset, recipe_arch, None if arch == recipe_arch else (arch if "_" in arch else f"dino_{arch}"))
        for dataset, recipe_arch in listed_recipes()
        for arch in common_sh_names("arch_names")
    ]
    folders = {}
    for run, folder in zip(runs, train_sh_output_dirs(runs)):
        dataset, recipe_arch, backbone = run
        own = f"outputs/train_{dataset}_{recipe_arch}"
        expected = (
            own if backbone is None else f"outputs/train_{dataset}_{short_arch(backbone)}_with_{recipe_arch}_recipe"
        )
        assert folder == expected, f"train.sh {run} trains into {folder}, not {expected}"
        assert folder not in folders, f"train.sh {run} and {folders[folder]} both train into {folder}"
        folders[folder] = run


def test_val_sh_names_a_recipe_that_exists_for_every_checkpoint_it_lacks(tmp_path):
    """For every (dataset, arch) val.sh accepts but holds no checkpoint of (the two released ones
    apart, which it downloads), its advice trains with a recipe that exists."""
    pairs = [
        (dataset, arch)
        for dataset in common_sh_names("dataset_names")
        for arch in common_sh_names("arch_names")
        if (dataset, arch) not in {("cocostuff27", "vits16"), ("cocostuff27", "vits8")}
    ]
    env = {**os.environ, "CHECKPOINT_DIR": str(tmp_path), "DATA_ROOT": str(tmp_path), "VAL_SH": str(ROOT / "val.sh")}
    loop = 'while read -r data arch; do bash "$VAL_SH" $data $arch; echo "exit $?" >&2; done'
    lines = "".join(f"{dataset} {arch}\n" for dataset, arch in pairs)
    result = subprocess.run(["bash", "-c", loop], input=lines, capture_output=True, text=True, env=env, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(pairs) and result.stderr.count("exit 2") == len(pairs), result.stderr
    for (dataset, arch), error in zip(pairs, errors):
        advice = re.search(r"'bash train\.sh (\S+) (\S+)(?: --backbone (\S+))?'", error)
        assert advice, f"val.sh {dataset} {arch}: no training command in {error!r}"
        recipe_dataset, recipe_arch, backbone = advice.groups()
        assert recipe_dataset == dataset and (ROOT / "configs" / f"train_{dataset}_{recipe_arch}.yaml").is_file(), error
        assert backbone is None or short_arch(backbone) == arch, error
