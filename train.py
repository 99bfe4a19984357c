"""Train IDDC (docs/method.md) on a benchmark (default COCO-Stuff-27), on one device or many (torchrun).

    python train.py --data-root DIR --config configs/train_cocostuff27_vits16.yaml
    python train.py --data-root DIR --config configs/train_cityscapes27_vits8.yaml     # its dataset: cityscapes27
    torchrun --nproc_per_node 4 train.py --data-root DIR --config configs/train_cocostuff27_vits8.yaml
    python train.py --data-root DIR --config configs/train_cocostuff27_vits16.yaml --resume --epochs 30
    python train.py --data-root DIR --config configs/train_cocostuff27_vits16.yaml --sweep sweep.yaml --output-dir SWEEP

--batch-size is the global batch (the paper's 64), split evenly over the processes. A sweep trains
variants of the head's hyper-parameters side by side on one data pipeline and backbone pass, each
exactly its own single run, in OUTPUT_DIR/<variant> (docs/sweeps.md).
"""

import os
import shutil
import sys
from pathlib import Path

import torch

from data.folder import DEFAULT_SHORT_SIDE, FILE_LIST
from data.registry import ALL_DATASET_NAMES, DEFAULT_DATASET, get_dataset
from engine.evaluation import ALL_PROTOCOLS
from engine.sweep import (
    OVERWRITTEN_FILES,
    RESUME_FILE,
    RUN_FILES,
    check_sweep_output,
    plan_variants,
    remove_overwritten,
)
from engine.tensorboard import require_tensorboard
from engine.trainer import Trainer
from modules.backbones import BACKBONES, resolve_backbone_name
from utils import distributed
from utils.cli import ArgumentParser, check_at_least, check_finite, entry_point, resolve_device
from utils.config import parse_args_with_config
from utils.errors import OptionError, OutputError
from utils.files import check_writable_dir, same_file
from utils.lock import hold_folder_lock
from utils.log import setup_logger

MIN_CLUSTERS, MAX_CLUSTERS = 2, 255  # a cluster map is an 8-bit image whose 255 marks ignored pixels


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config", default=None, help="YAML file of defaults, e.g. configs/train_cocostuff27_vits16.yaml"
    )
    parser.add_argument(
        "--dataset",
        choices=ALL_DATASET_NAMES,
        default=DEFAULT_DATASET,
        help="a benchmark, or folder: your own images (docs/datasets.md, docs/own_data.md)",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        required_unless_config=True,
        help="the dataset's root folder (COCO-Stuff: images/, annotations/, curated/ optional)",
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help=f"folder: images whose short side is above S are scaled down to it (default {DEFAULT_SHORT_SIDE}; "
        "stored in the checkpoint, where eval.py and predict.py take it)",
    )
    parser.add_argument("--output-dir", default="outputs/train", help="checkpoints, config and logs go here")
    parser.add_argument("--backbone", choices=BACKBONES, default=None, help="frozen backbone (default dino_vits16)")
    parser.add_argument(
        "--patch-size",
        type=int,
        choices=(16, 8),
        default=None,
        help="short form of --backbone dino_vits16 / dino_vits8",
    )
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="the backbone's release file; default: the torch hub cache, else downloaded there",
    )
    parser.add_argument("--num-heads", type=int, default=None, help="attention heads (default: embed dim / 64)")
    parser.add_argument(
        "--num-clusters",
        type=int,
        default=None,
        metavar="K",
        help=f"clusters the head learns, {MIN_CLUSTERS}..{MAX_CLUSTERS} (default: the dataset's class count; "
        "more over-clusters); a sweep key (docs/training.md)",
    )
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (with --resume: the total)")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam lr of the head and classifier")
    parser.add_argument("--probe-lr", type=float, default=1e-3, help="Adam lr of the linear probe")
    parser.add_argument("--lr-power", type=float, default=0.9, help="poly decay power, stepped once an epoch")
    parser.add_argument(
        "--pos-threshold",
        type=float,
        default=0.2,
        help="loss: t+, the similarity F(u0, u1) above which a position is a positive (docs/method.md)",
    )
    parser.add_argument(
        "--neg-threshold",
        type=float,
        default=0.12,
        help="loss: t-, the threshold of the negative term (docs/method.md)",
    )
    parser.add_argument("--neg-weight", type=float, default=1.4, help="lambda1 (w0 of the original)")
    parser.add_argument(
        "--balance-weight", type=float, default=0.4, help="lambda2 (w1 of the original): 0.4 S/16, 0.25 S/8"
    )
    parser.add_argument(
        "--num-negatives",
        type=int,
        default=3,
        help="loss: batch shifts a step that pair each image with a negative (docs/method.md)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seeds the data order, augmentations, negatives and heads")
    parser.add_argument(
        "--head-seed", type=int, default=None, help="seeds the head and probe initialisation alone (default: --seed)"
    )
    parser.add_argument(
        "--sweep",
        default=None,
        metavar="FILE",
        help="train the variants of FILE.yaml (head hyper-parameters) side by side on one backbone pass, each in "
        "OUTPUT_DIR/<variant>: docs/sweeps.md",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default=None, help="default: bf16 on CUDA, fp32 on CPU"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its algorithms and keep the fastest (may be faster; runs are then not "
        "reproducible bit for bit; docs/gpu.md)",
    )
    parser.add_argument("--num-workers", type=int, default=8, help="data-loading processes (of each process)")
    parser.add_argument(
        "--val-protocol",
        choices=ALL_PROTOCOLS,
        default=None,
        help="validation after every epoch (default resize320; folder: photo, eval.py's protocol)",
    )
    parser.add_argument(
        "--final-protocol",
        choices=(*ALL_PROTOCOLS, "none"),
        default="none",
        help="one more evaluation of the last model",
    )
    parser.add_argument(
        "--val-batch-size", type=int, default=32, help="images (windows for sliding) per forward of the validation"
    )
    parser.add_argument("--log-every", type=int, default=50, help="steps between readable log lines")
    parser.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="train on the first N training items only (images; Cityscapes: five-crops)",
    )
    parser.add_argument("--val-limit", type=int, default=None, help="validate on the first N images only")
    parser.add_argument(
        "--resume", action="store_true", help=f"continue from OUTPUT_DIR/{RESUME_FILE}, at the exact step it holds"
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help=f"also write {RESUME_FILE} every N steps (default 0: at the end of every epoch only)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --output-dir (its checkpoints and logs are deleted)",
    )
    return parser


def check_options(args):
    """Every option that can be wrong, before anything is read or written."""
    check_num_clusters(args)
    for option in ("epochs", "num_negatives", "val_batch_size", "log_every", "train_limit", "val_limit"):
        check_at_least(getattr(args, option), "--" + option.replace("_", "-"), 1)
    check_at_least(args.num_workers, "--num-workers", 0)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.batch_size < 2 or args.batch_size % world:
        raise OptionError(
            f"--batch-size {args.batch_size}: must be at least 2 (IDDC's negatives come from the other "
            f"images of the batch) and divisible by the {world} process(es)"
        )
    check_at_least(args.checkpoint_every, "--checkpoint-every", 0)
    for option in ("lr", "probe_lr"):
        check_finite(getattr(args, option), "--" + option.replace("_", "-"), positive=True)
    for option in ("lr_power", "pos_threshold", "neg_threshold", "neg_weight", "balance_weight"):
        check_finite(getattr(args, option), "--" + option.replace("_", "-"))
    check_at_least(args.head_seed, "--head-seed", 0)
    if args.dataset == "folder":
        args.short_side = DEFAULT_SHORT_SIDE if args.short_side is None else args.short_side
        check_at_least(args.short_side, "--short-side", 1)
        if args.val_protocol not in (None, "photo"):
            raise OptionError(
                f"--val-protocol {args.val_protocol}: --dataset folder validates with the photo protocol, "
                f"as eval.py scores it"
            )
        args.val_protocol = "photo"
        if args.final_protocol not in ("none", "photo"):
            raise OptionError(
                f"--final-protocol {args.final_protocol}: --dataset folder is scored with photo (or none)"
            )
    elif args.short_side is not None:
        raise OptionError(f"--short-side applies to --dataset folder; {args.dataset} is read at its own size")
    args.val_protocol = args.val_protocol or "resize320"
    if args.resume and args.overwrite:
        raise OptionError("--resume and --overwrite contradict each other: continue the run, or replace it")
    args.device = resolve_device(args.device)
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    args.head_seed = args.seed if args.head_seed is None else args.head_seed


def check_num_clusters(args):
    """--num-clusters in MIN_CLUSTERS..MAX_CLUSTERS (cluster maps are 8-bit PNGs, 255 marks ignored
    pixels); left out, the dataset's class count, where it has one (see :func:`require_num_clusters`)."""
    if args.num_clusters is None:
        if args.dataset != "folder":  # a folder's C is known once it is scanned (require_num_clusters)
            args.num_clusters = get_dataset(args.dataset).num_classes or None
    elif not MIN_CLUSTERS <= args.num_clusters <= MAX_CLUSTERS:
        raise OptionError(
            f"--num-clusters {args.num_clusters}: must lie in {MIN_CLUSTERS}..{MAX_CLUSTERS} "
            f"(cluster maps are 8-bit images whose value 255 marks ignored pixels)"
        )


def require_num_clusters(args, variants, spec):
    """Where the dataset gives no class count (a folder without labels), every run names its K:
    --num-clusters, or num_clusters in each variant of the sweep. A folder's runs without a K take
    the C of its labels or classes.txt."""
    for variant in variants:
        if variant.args.num_clusters is None and spec.num_classes >= MIN_CLUSTERS:
            variant.args.num_clusters = spec.num_classes
    args.num_clusters = args.num_clusters or variants[0].args.num_clusters
    for variant in variants:
        if variant.args.num_clusters is None:
            where = f"sweep: variant {variant.name}: " if variant.name else ""
            raise OptionError(
                f"{where}--num-clusters is required on --dataset {args.dataset}: its images have no labels "
                f"giving the number of classes; choose K (docs/sweeps.md, 'Choosing the number of clusters')"
            )


def check_output_dir(args):
    """Refuse to start a new run over an existing one, before anything is written there."""
    output_dir = Path(args.output_dir)
    if args.resume:
        if not (output_dir / RESUME_FILE).is_file():
            raise OptionError(
                f"--resume: {output_dir / RESUME_FILE} not found; --output-dir must be the folder of the "
                f"run to continue (or leave out --resume to start a new run)"
            )
    elif not args.overwrite:
        existing = [name for name in RUN_FILES if (output_dir / name).exists()]
        if existing:
            raise OutputError(
                f"--output-dir {output_dir} holds a run ({', '.join(existing)}); pass --resume to continue it, "
                f"--overwrite to replace it, or choose another --output-dir"
            )
    else:
        for name in OVERWRITTEN_FILES:
            for option, given in (("--backbone-weights", args.backbone_weights), ("--config", args.config)):
                if given is not None and (output_dir / name).exists() and same_file(given, output_dir / name):
                    raise OutputError(
                        f"--overwrite would delete {output_dir / name}, which is the {option} of this run; "
                        f"copy it elsewhere first"
                    )
    check_writable_dir(output_dir, "--output-dir")
    return output_dir


def check_data(args, output_dir):
    """A fast scan of both splits (the validation split too: it is first read after a whole epoch).

    A ``folder`` root is scanned (file headers, its labels); a resumed run trains on the file list
    it saved (data/folder.py).
    """
    spec = get_dataset(args.dataset, args.data_root)
    if args.dataset == "folder":
        spec.short_side = args.short_side
        if args.resume:
            spec.use_file_list(output_dir / FILE_LIST)
    spec.check_split_files(args.data_root, "train", args.train_limit)
    spec.check_split_files(args.data_root, "val", args.val_limit)
    items = len(spec.train_items(args.data_root, "train")[: args.train_limit])
    if items < args.batch_size:
        raise OptionError(
            f"--batch-size {args.batch_size}: the training split has only {items} items (batches are drop_last)"
        )
    return spec


@entry_point
def main(argv=None):
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    try:  # a config's value bypasses argparse's choices: check it here as well
        args.backbone = resolve_backbone_name(args.backbone, args.patch_size)
    except ValueError as err:
        parser.error(str(err))
    # Everything is checked and read before the first write, so that a refused run changes nothing.
    check_options(args)
    variants, sweep = plan_variants(args, check_options)  # a single run is one variant, in --output-dir
    # One writer per folder (rank 0): a second run, or a --resume while this one trains, is refused.
    check_writable_dir(args.output_dir, "--output-dir")
    hold_folder_lock([args.output_dir, *(variant.folder for variant in variants)], "--output-dir")
    output_dir = check_sweep_output(args, variants) if sweep else check_output_dir(args)
    spec = check_data(args, output_dir)
    require_num_clusters(args, variants, spec)
    require_tensorboard()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = distributed.init_from_env(args.device)
    try:
        trainer = Trainer(args, variants, device, output_dir, sweep, spec)
        trainer.load()  # every input read (resume files, backbone) before the first write
        if args.overwrite and distributed.is_main():
            if sweep:
                remove_overwritten(output_dir, variants)
            for name in OVERWRITTEN_FILES:
                (output_dir / name).unlink(missing_ok=True)
            shutil.rmtree(output_dir / "tensorboard", ignore_errors=True)
        logger = setup_logger(log_file=output_dir / "train.log")
        return trainer.train(logger)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
