"""Train IDDC on a benchmark (default COCO-Stuff-27; SPEC §3-4), on one device or many (torchrun).

    python train.py --data-root DIR --config configs/train_cocostuff27_vits16.yaml
    python train.py --data-root DIR --config configs/train_cityscapes27_vits8.yaml     # its dataset: cityscapes27
    torchrun --nproc_per_node 4 train.py --data-root DIR --config configs/train_cocostuff27_vits8.yaml
    python train.py --data-root DIR --config configs/train_cocostuff27_vits16.yaml --resume --epochs 30

--batch-size is the global batch (the paper's 64), split evenly over the processes.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from data.registry import DATASET_NAMES, DEFAULT_DATASET, get_dataset
from engine.evaluation import PROTOCOLS, evaluate_heads, make_protocol
from engine.metrics import segmentation_metrics
from engine.tensorboard import TensorboardLog, require_tensorboard
from engine.training import (
    ClustersAndProbe,
    StopRequests,
    StopTraining,
    TrainableHead,
    poly_lr,
    restore_rng_states,
    rng_states,
    seed_everything,
    set_lr,
    train_loader,
    train_one_epoch,
)
from modules.backbones import BACKBONES, resolve_backbone_name
from modules.checkpoint import iddc_state, model_from_iddc_state, new_iddc_model
from modules.loss import IDDCLoss
from modules.model import LinearProbe
from modules.weights import CheckpointError, load_file, save_atomic
from utils import distributed
from utils.cli import ArgumentParser, check_at_least, check_finite, entry_point, resolve_device
from utils.config import parse_args_with_config, save_config
from utils.errors import OptionError, OutputError
from utils.files import check_writable_dir, same_file
from utils.log import JsonlLog, LogGroup, git_commit, setup_logger

RESUME_FILE = "resume.pth"
# A folder holding any of these holds a run: a new run there needs --resume or --overwrite.
RUN_FILES = ("best_model.pth", "last_model.pth", RESUME_FILE)
# What --overwrite removes before the new run starts, so that its logs do not mix with the old ones.
OVERWRITTEN_FILES = (*RUN_FILES, "config.yaml", "log.jsonl", "train.log")
# What a resume file must hold to continue a run (resume_at and epoch_sums are optional: files of
# end-of-epoch-only versions lack them).
RESUME_KEYS = ("model", "probe", "optimizer", "probe_optimizer", "epoch", "step", "best_miou", "rng")


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--config", default=None, help="YAML file of defaults, e.g. configs/train_cocostuff27_vits16.yaml"
    )
    parser.add_argument(
        "--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET, help="benchmark (README, 'Datasets')"
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="the dataset's root folder (COCO-Stuff: images/, annotations/, curated/ optional)",
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
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch, split over the processes")
    parser.add_argument("--lr", type=float, default=5e-4, help="Adam lr of the head and classifier")
    parser.add_argument("--probe-lr", type=float, default=1e-3, help="Adam lr of the linear probe")
    parser.add_argument("--lr-power", type=float, default=0.9, help="poly decay power, stepped once an epoch")
    parser.add_argument("--pos-threshold", type=float, default=0.2)
    parser.add_argument("--neg-threshold", type=float, default=0.12)
    parser.add_argument("--neg-weight", type=float, default=1.4, help="lambda1 (w0 of the original)")
    parser.add_argument(
        "--balance-weight", type=float, default=0.4, help="lambda2 (w1 of the original): 0.4 S/16, 0.25 S/8"
    )
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1, help="data order, augmentations, negatives and initialisation")
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
    parser.add_argument("--val-protocol", choices=PROTOCOLS, default="resize320", help="validation after every epoch")
    parser.add_argument(
        "--final-protocol", choices=(*PROTOCOLS, "none"), default="none", help="one more evaluation of the last model"
    )
    parser.add_argument("--val-batch-size", type=int, default=32)
    parser.add_argument("--log-every", type=int, default=50, help="steps between readable log lines")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training images")
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


def validate(model, probe, args, device, protocol_name, on_image=None):
    """Clusters (Hungarian-matched) and the linear probe (identity-matched) from one evaluation pass."""
    score_size = get_dataset(args.dataset).score_size  # the dataset's sliding grid (2:1 for Cityscapes)
    clusters, probe_result = evaluate_heads(
        ClustersAndProbe(model, probe),
        args.data_root,
        make_protocol(protocol_name, score_size=score_size),
        device=device,
        precision=args.precision,
        batch_size=args.val_batch_size,
        num_workers=min(args.num_workers, 4),
        limit=args.val_limit,
        on_image=on_image,
        dataset=args.dataset,
    )
    probe_metrics = segmentation_metrics(probe_result.confusion, np.arange(model.num_classes))
    return clusters, probe_metrics


def released_checkpoint(model, args, epoch, step, metrics):
    """Released layout (loads into the original code) plus plain-valued extras."""
    return iddc_state(model, config=vars(args), epoch=epoch, step=step, metrics=metrics, format="iddc-v1")


def check_options(args):
    """Every option that can be wrong, before anything is read or written."""
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
    if args.resume and args.overwrite:
        raise OptionError("--resume and --overwrite contradict each other: continue the run, or replace it")
    args.device = resolve_device(args.device)
    args.precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")


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


def check_data(args):
    """A fast scan of both splits (the validation split too: it is first read after a whole epoch)."""
    spec = get_dataset(args.dataset)
    spec.check_split_files(args.data_root, "train", args.train_limit)
    spec.check_split_files(args.data_root, "val", args.val_limit)
    items = len(spec.train_items(args.data_root, "train")[: args.train_limit])
    if items < args.batch_size:
        raise OptionError(
            f"--batch-size {args.batch_size}: the training split has only {items} items (batches are drop_last)"
        )


def build_model(args, output_dir):
    """(model, resume state or None), read before anything is written: a resume file that cannot
    be read, or a backbone file that does not fit, refuses the run with the folder untouched."""
    spec = get_dataset(args.dataset)
    if not args.resume:
        model = new_iddc_model(
            args.backbone, args.backbone_weights, num_classes=spec.num_classes, num_heads=args.num_heads
        )
        return model, None
    resume_path = output_dir / RESUME_FILE
    resume = load_file(resume_path)
    missing = [key for key in RESUME_KEYS if not isinstance(resume, dict) or key not in resume]
    if missing:
        raise CheckpointError(
            f"{resume_path}: not a resume file written by train.py (it lacks {', '.join(missing)}); "
            f"--resume continues a run from the {RESUME_FILE} that train.py saved in --output-dir"
        )
    # The resume file carries the backbone: no download.
    model = model_from_iddc_state(resume["model"], resume_path, num_heads=args.num_heads, backbone=args.backbone)
    if model.num_classes != spec.num_classes:
        raise CheckpointError(
            f"{resume_path}: a run with {model.num_classes} clusters cannot continue on "
            f"--dataset {spec.name} ({spec.num_classes} classes)"
        )
    return model, resume


@entry_point
def main(argv=None):
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    if args.data_root is None:
        parser.error("--data-root is required")
    try:  # a config's value bypasses argparse's choices: check it here as well
        args.backbone = resolve_backbone_name(args.backbone, args.patch_size)
    except ValueError as err:
        parser.error(str(err))
    # Everything is checked and read before the first write, so that a refused run changes nothing.
    check_options(args)
    output_dir = check_output_dir(args)
    check_data(args)
    require_tensorboard()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = distributed.init_from_env(args.device)
    try:
        seed_everything(args.seed)
        model, resume = build_model(args, output_dir)
        if args.overwrite and distributed.is_main():
            for name in OVERWRITTEN_FILES:
                (output_dir / name).unlink(missing_ok=True)
            shutil.rmtree(output_dir / "tensorboard", ignore_errors=True)
        logger = setup_logger(log_file=output_dir / "train.log")
        return train(args, device, output_dir, logger, model, resume)
    finally:
        distributed.cleanup()


def train(args, device, output_dir, logger, model, resume):
    commit = git_commit()
    logger.info(
        "train.py at commit %s, %d process(es), config:\n%s",
        commit,
        distributed.world_size(),
        json.dumps(vars(args), indent=1, sort_keys=True),
    )
    if distributed.is_main():
        save_config(args, output_dir / "config.yaml")
    tensorboard = TensorboardLog(output_dir / "tensorboard")
    jsonl_log = JsonlLog(output_dir / "log.jsonl")
    jsonl = LogGroup(jsonl_log, tensorboard)  # every logged value goes to both
    resume_path = output_dir / RESUME_FILE
    spec = get_dataset(args.dataset)
    probe = LinearProbe(model.vit.embed_dim, model.num_classes)
    model.to(device)
    probe.to(device)
    head = TrainableHead(model)
    optimizer = torch.optim.Adam(head.parameters(), lr=args.lr)
    probe_optimizer = torch.optim.Adam(probe.parameters(), lr=args.probe_lr)
    start_epoch, start_batch, step, best_miou, epoch_sums = 0, 0, 0, -1.0, {}
    if resume is not None:
        probe.load_state_dict(resume["probe"])
        optimizer.load_state_dict(resume["optimizer"])
        probe_optimizer.load_state_dict(resume["probe_optimizer"])
        start_epoch, start_batch = resume_position(resume)
        step, best_miou, epoch_sums = resume["step"], resume["best_miou"], resume.get("epoch_sums", {})
        restore_rng_states(resume["rng"])
        logger.info("resuming from %s at epoch %d, batch %d (step %d)", resume_path, start_epoch, start_batch, step)
        jsonl_log.drop_after(step)
    # Gradients are summed over the processes (see IDDCLoss's ``objective``), so no DDP wrapper:
    # the processes start from rank 0's weights and stay equal.
    distributed.broadcast_parameters([*head.parameters(), *probe.parameters()])

    loss_fn = IDDCLoss(args.pos_threshold, args.neg_threshold, args.neg_weight, args.balance_weight, args.num_negatives)
    loader = train_loader(args.data_root, args.batch_size, args.seed, args.num_workers, device, args.train_limit, spec)
    if start_epoch >= args.epochs:
        logger.info(
            "nothing to do: epoch %d already done; pass --epochs > %d to train further", start_epoch - 1, start_epoch
        )
    names = spec.class_names

    def resume_state(epoch, batch, step, epoch_sums, best_miou):
        """Everything to continue at ``batch`` of ``epoch`` exactly (weights, optimisers, position)."""
        return {
            "model": iddc_state(model),
            "probe": probe.state_dict(),
            "optimizer": optimizer.state_dict(),
            "probe_optimizer": probe_optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_miou": best_miou,
            "resume_at": {"epoch": epoch, "batch": batch},
            "epoch_sums": epoch_sums,
            "rng": rng_states(),
            "config": vars(args),
            "git_commit": commit,
            "scheduler": {
                "kind": "poly",
                "power": args.lr_power,
                "epochs": args.epochs,
                "base_lrs": [args.lr, args.probe_lr],
            },
        }

    def save_resume(state):
        if distributed.is_main():
            save_atomic(state, resume_path)

    with StopRequests() as stop:
        progress = {"batch": start_batch, "step": step, "epoch_sums": epoch_sums}
        for epoch in range(start_epoch, args.epochs):
            set_lr(optimizer, poly_lr(args.lr, epoch, args.epochs, args.lr_power))
            set_lr(probe_optimizer, poly_lr(args.probe_lr, epoch, args.epochs, args.lr_power))
            batches_per_epoch = loader.batch_sampler.batches_per_epoch

            def after_step(batches_done, step, sums, epoch=epoch):
                progress.update(batch=batches_done, step=step, epoch_sums=sums)
                if stop.requested():
                    raise StopTraining
                if args.checkpoint_every and step % args.checkpoint_every == 0 and batches_done < batches_per_epoch:
                    save_resume(resume_state(epoch, batches_done, step, sums, best_miou))

            try:
                step, train_means = train_one_epoch(
                    model,
                    head,
                    probe,
                    loader,
                    loss_fn,
                    optimizer,
                    probe_optimizer,
                    epoch=epoch,
                    step=progress["step"],
                    seed=args.seed,
                    device=device,
                    precision=args.precision,
                    log_every=args.log_every,
                    logger=logger,
                    jsonl=jsonl,
                    start_batch=progress["batch"],
                    epoch_sums=progress["epoch_sums"],
                    after_step=after_step,
                )
            except Exception as err:  # a loader worker killed by the same Ctrl-C also ends here
                if not (isinstance(err, StopTraining) or stop.requested(local=True)):
                    raise
                save_resume(resume_state(epoch, progress["batch"], progress["step"], progress["epoch_sums"], best_miou))
                raise stop.stopped(resume_path, epoch, progress["batch"], progress["step"])
            progress = {"batch": 0, "step": step, "epoch_sums": {}}

            pictures = tensorboard.pictures(spec.palette)
            clusters, probe_metrics = validate(model, probe, args, device, args.val_protocol, on_image=pictures)
            tensorboard.write_pictures(pictures, clusters.metrics["cluster_to_class"], step)
            miou, acc = float(clusters.metrics["miou"]), float(clusters.metrics["acc"])
            logger.info(
                "epoch %d %s: clusters Acc %.2f mIoU %.2f | linear probe Acc %.2f mIoU %.2f",
                epoch,
                args.val_protocol,
                acc,
                miou,
                probe_metrics["acc"],
                probe_metrics["miou"],
            )
            jsonl.write(
                kind="val",
                epoch=epoch,
                step=step,
                protocol=args.val_protocol,
                acc=acc,
                miou=miou,
                probe_acc=float(probe_metrics["acc"]),
                probe_miou=float(probe_metrics["miou"]),
                per_class_iou=dict(zip(names, map(float, clusters.metrics["iou"]))),
                train=train_means,
            )
            metrics = {"protocol": args.val_protocol, "acc": acc, "miou": miou}
            if distributed.is_main():
                if miou >= best_miou:  # ">=" as the original, which keeps the later of equal epochs
                    best_miou = miou
                    save_atomic(released_checkpoint(model, args, epoch, step, metrics), output_dir / "best_model.pth")
                    logger.info(
                        "best model (mIoU %.2f, %s) saved to %s", miou, args.val_protocol, output_dir / "best_model.pth"
                    )
                save_atomic(released_checkpoint(model, args, epoch, step, metrics), output_dir / "last_model.pth")
            save_resume(resume_state(epoch + 1, 0, step, {}, best_miou) | {"epoch": epoch})
            distributed.barrier()
            if stop.requested():
                raise stop.stopped(resume_path, epoch + 1, 0, step)

    if args.final_protocol != "none":
        final, final_probe = validate(model, probe, args, device, args.final_protocol)
        logger.info(
            "last model, %s: clusters Acc %.2f mIoU %.2f | linear probe Acc %.2f mIoU %.2f",
            args.final_protocol,
            final.metrics["acc"],
            final.metrics["miou"],
            final_probe["acc"],
            final_probe["miou"],
        )
        jsonl.write(
            kind="final",
            protocol=args.final_protocol,
            acc=float(final.metrics["acc"]),
            miou=float(final.metrics["miou"]),
            probe_acc=float(final_probe["acc"]),
            probe_miou=float(final_probe["miou"]),
        )
    tensorboard.close()
    return 0


def resume_position(resume):
    """(epoch, batch) a resume file continues at; files of end-of-epoch-only versions continue after 'epoch'."""
    at = resume.get("resume_at")
    return (resume["epoch"] + 1, 0) if at is None else (at["epoch"], at["batch"])


if __name__ == "__main__":
    sys.exit(main())
