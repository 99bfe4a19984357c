"""Evaluate an IDDC checkpoint on a benchmark (default COCO-Stuff-27) under a named protocol.

python eval.py --data-root DIR --checkpoint checkpoints/cocostuff27_vits16.pth
python eval.py --dataset cityscapes27 --data-root DIR --checkpoint FILE     # sliding at full resolution
python eval.py --data-root DIR --checkpoint FILE --protocol center320 --flip --output-json out.json
python eval.py --data-root DIR --checkpoint FILE --protocol center320 --flip --crf   # the peers' full protocol
python eval.py --data-root DIR --checkpoint FILE --save-visuals outputs/visuals --num-visuals 8
python eval.py --data-root DIR --checkpoint A.pth B.pth C.pth --output-json results/   # results/A.json, ...

Several checkpoints whose backbones hold the same tensors (a sweep's variants) are evaluated in one
pass: one backbone forward per window for all their heads; different backbones are evaluated apart.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from data.folder import DEFAULT_SHORT_SIDE, EXCLUDED_FILE, excluded_lines
from data.registry import ALL_DATASET_NAMES, DEFAULT_DATASET, get_dataset
from data.spec import DataError
from engine.crf import require_pydensecrf
from engine.evaluation import ALL_PROTOCOLS, evaluate_heads, make_protocol
from engine.names import add_names_options, resolve_names
from engine.trainer import HeadsOnBackbone, share_backbone
from engine.visualize import VisualCollector
from modules.checkpoint import add_expect_patch_size, load_iddc_model
from modules.weights import CheckpointError
from utils import distributed
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device
from utils.config import parse_args_with_config, save_config
from utils.errors import OptionError, OutputError
from utils.files import check_writable_dir, check_writable_file, write_text_atomic
from utils.log import git_commit, setup_logger


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="YAML file of defaults (flags override it)")
    parser.add_argument(
        "--dataset",
        choices=ALL_DATASET_NAMES,
        default=DEFAULT_DATASET,
        help="benchmark (docs/datasets.md), or folder: your own labelled images (docs/own_data.md); sets the "
        "default protocol and scoring grid",
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="folder: the working size images are segmented at (default: the checkpoint's, else "
        f"{DEFAULT_SHORT_SIDE}); the maps are scored at the labels' size",
    )
    parser.add_argument(
        "--data-root",
        required_unless_config=True,
        help="the dataset's root folder (COCO-Stuff: images/, annotations/, curated/ optional)",
    )
    parser.add_argument(
        "--checkpoint",
        nargs="+",
        required_unless_config=True,
        help="IDDC checkpoint(s) (released format or written by train.py); several share backbone forwards",
    )
    add_expect_patch_size(parser)
    parser.add_argument(
        "--num-heads", type=int, default=None, help="attention heads (default: embed dim / 64, as DINO's ViTs)"
    )
    parser.add_argument(
        "--protocol",
        choices=ALL_PROTOCOLS,
        default=None,
        help="sliding (published), resize320 (original's per-epoch val), center320 (peers'), photo (predict.py's "
        "maps, scored at the labels' size); default: the dataset's (sliding; center320 for potsdam3; photo for folder)",
    )
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip averaging (default: on for sliding, off otherwise)",
    )
    parser.add_argument("--window", type=int, default=224, help="sliding window size")
    parser.add_argument("--overlap", type=int, default=75, help="sliding window overlap")
    parser.add_argument(
        "--score-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="size predictions and labels are scored at (sliding); "
        "default: the dataset's (320 320; 320 640 for cityscapes27)",
    )
    parser.add_argument(
        "--image-interpolation",
        choices=("nearest", "bilinear"),
        default="nearest",
        help="center320 image resizing: nearest (STEGO, HP, CAUSE) or bilinear (PiCIE)",
    )
    parser.add_argument(
        "--crf",
        action="store_true",
        help="refine with STEGO's dense CRF before the argmax (the peers' post-processing)",
    )
    parser.add_argument(
        "--crf-workers",
        type=int,
        default=None,
        help="CRF processes running beside the forwards (default: CPU cores, at most 8; 0: none)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32 reproduces the published numbers; bf16 autocast is faster",
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="images (windows for sliding, flips included) per backbone forward"
    )
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data-loading processes (default: 2 on CUDA, 0 on CPU, where they would slow the forwards)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images of the split")
    parser.add_argument(
        "--output-json",
        default=None,
        help="write the results (metrics, confusion, assignment) here; with several checkpoints a folder that "
        "receives <checkpoint stem>.json",
    )
    parser.add_argument(
        "--save-visuals",
        default=None,
        metavar="DIR",
        help="write image | ground truth | matched prediction PNGs, confusion.png and per_class_iou.png here",
    )
    add_names_options(parser, "the pictures' predictions")
    parser.add_argument(
        "--num-visuals", type=int, default=8, help="how many images --save-visuals draws (the first ones of rank 0)"
    )
    return parser


def check_options(args):
    """Every option that can be wrong, before a model is loaded or an image read."""
    check_at_least(args.batch_size, "--batch-size", 1)
    check_at_least(args.num_workers, "--num-workers", 0)
    check_at_least(args.limit, "--limit", 1)
    check_at_least(args.num_visuals, "--num-visuals", 0)
    for side in args.score_size or ():
        check_at_least(side, "--score-size", 1)
    if args.protocol in ("sliding", "photo") and not 0 <= args.overlap < args.window:
        raise OptionError(
            f"--overlap must lie in 0..{args.window - 1} (below --window {args.window}), got {args.overlap}"
        )
    args.device = resolve_device(args.device)
    if args.crf:
        require_pydensecrf()
    several = isinstance(args.checkpoint, list)
    if args.output_json and several:
        check_json_folder(args.output_json, args.checkpoint, args.config)
    elif args.output_json:
        output = Path(args.output_json)
        for path in (output, output.with_suffix(".config.yaml")):
            check_writable_file(path, "--output-json", inputs=[args.checkpoint, args.config])
    if args.save_visuals and several:
        raise OptionError("--save-visuals draws the pictures of one checkpoint; give --checkpoint a single file")
    if args.names and not args.save_visuals:
        raise OptionError(f"--names {args.names}: names colour the pictures of --save-visuals DIR; give it too")
    if args.save_visuals:
        data_folders = [Path(args.data_root, sub).resolve() for sub in ("images", "annotations")]
        if any(Path(args.save_visuals).resolve().is_relative_to(folder) for folder in data_folders):
            raise OutputError(
                f"--save-visuals {args.save_visuals}: inside the data root's images/ or annotations/, whose "
                f"files the pictures (<id>.png) could replace; choose a folder outside them"
            )
        check_writable_dir(args.save_visuals, "--save-visuals")


def check_json_folder(folder, checkpoints, config):
    """--output-json FOLDER of several checkpoints: one <stem>.json each, so the stems must differ."""
    stems = {}
    for checkpoint in checkpoints:
        stem = Path(checkpoint).stem
        if stem in stems:
            raise OptionError(
                f"--output-json {folder}: {stems[stem]} and {checkpoint} would both write {stem}.json; "
                f"give the checkpoints distinct file names (e.g. links) or evaluate them apart"
            )
        stems[stem] = checkpoint
        for path in (Path(folder) / f"{stem}.json", Path(folder) / f"{stem}.config.yaml"):
            check_writable_file(path, "--output-json", inputs=[*checkpoints, config])


def format_table(result, names):
    lines = [f"{'class':<18}{'IoU %':>8}{'Acc %':>8}"]
    for name, iou, acc in zip(names, result.metrics["iou"], result.metrics["class_acc"]):
        lines.append(f"{name:<18}{iou:>8.2f}{acc:>8.2f}")
    lines.append(f"{'pixel Acc':<18}{result.metrics['acc']:>8.2f}")
    lines.append(f"{'mIoU':<18}{result.metrics['miou']:>8.2f}")
    many_to_one = result.metrics.get("many_to_one")
    if many_to_one is not None:  # K > C: the many-to-one match, apart from the one-to-one figures above
        lines.append(f"{'many-to-one Acc':<18}{many_to_one['acc']:>8.2f}")
        lines.append(f"{'many-to-one mIoU':<18}{many_to_one['miou']:>8.2f}")
    return "\n".join(lines)


def check_clusters_fit(model, meta, spec, checkpoint):
    """One clear error when a checkpoint trained for another dataset is evaluated on this one.

    Any number of clusters K is scored (K < C: unmatched classes score 0; K > C: the many-to-one
    match too) when the checkpoint records a training on this dataset; a file that records none (a
    release) or another dataset must have one cluster per class of this one.
    """
    trained_on = (meta.get("config") or {}).get("dataset")
    if model.num_classes == spec.num_classes or trained_on == spec.name:
        return
    hint = f" (it was trained with --dataset {trained_on})" if trained_on else ""
    raise CheckpointError(
        f"{checkpoint}: the model has {model.num_classes} clusters but --dataset {spec.name} has "
        f"{spec.num_classes} classes{hint}; pass the dataset it was trained for"
    )


@entry_point
def main(argv=None):
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    if len(args.checkpoint) == 1:  # one checkpoint: as before, a file name (and --output-json a file)
        args.checkpoint = args.checkpoint[0]
    spec = get_dataset(args.dataset, args.data_root)
    args.protocol = args.protocol or spec.default_protocol
    if args.dataset == "folder" and args.protocol != "photo":
        raise OptionError(f"--protocol {args.protocol}: --dataset folder is scored with the photo protocol")
    if args.dataset != "folder" and args.short_side is not None:
        raise OptionError(f"--short-side applies to --dataset folder; {args.dataset} is read at its own size")
    check_at_least(args.short_side, "--short-side", 1)
    args.score_size = args.score_size or spec.score_size
    args.score_size = None if args.score_size is None else tuple(args.score_size)
    check_at_least(args.crf_workers, "--crf-workers", 0)
    check_options(args)
    spec.check_split_files(args.data_root, "val", args.limit)  # a fast scan, before the model is loaded
    if args.dataset == "folder" and not spec.has_validation(args.data_root):
        raise DataError(
            f"--data-root {args.data_root}: no image has a label file (labels/<image path>.png), so there is "
            f"nothing to score; docs/own_data.md"
        )
    device = distributed.init_from_env(args.device)
    main_process = distributed.is_main()  # remembered: after cleanup every process would read as rank 0
    logger = setup_logger()
    commit = git_commit()
    logger.info("eval.py at commit %s with %s", commit, json.dumps(vars(args), sort_keys=True))
    collector = VisualCollector(args.num_visuals, spec.palette) if args.save_visuals and main_process else None
    protocol = make_protocol(
        args.protocol, args.flip, args.window, args.overlap, args.score_size, args.image_interpolation, args.crf
    )
    checkpoints = args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]
    try:
        models, metas, results = evaluate_checkpoints(args, checkpoints, spec, protocol, device, collector)
    finally:
        distributed.cleanup()
    if len(checkpoints) > 1:
        logger.info(
            "%d checkpoints, %d backbone(s): one evaluation pass per backbone",
            len(checkpoints),
            len({id(model.vit) for model in models}),
        )
    for result in results:
        if result.confusion.sum() == 0:  # every metric would be NaN
            raise DataError(
                f"--data-root {args.data_root}: the {result.num_images} image(s) evaluated hold no labelled pixel "
                f"(every label value is 255, unlabelled), so there is nothing to score"
            )
    if not main_process:
        return 0
    if args.dataset == "folder":
        report_excluded(spec, args, logger)
    for checkpoint, model, meta, result in zip(checkpoints, models, metas, results):
        if len(checkpoints) == 1:
            path, config = (Path(args.output_json) if args.output_json else None), args
        else:
            path = Path(args.output_json, Path(checkpoint).stem + ".json") if args.output_json else None
            config = argparse.Namespace(**(vars(args) | {"checkpoint": checkpoint}))
        report(result, checkpoint, model, meta, spec, protocol, config, commit, path, logger)
    if collector is not None:
        names, result = spec.class_names, results[0]
        per_class_iou = dict(zip(names, result.metrics["iou"]))
        collector.write(args.save_visuals, result.metrics["cluster_to_class"], names, result.confusion, per_class_iou)
        logger.info("pictures written to %s", args.save_visuals)
    return 0


def report_excluded(spec, args, logger):
    """The labelled images the folder's scan left out (they cannot be opened, so they are not scored):
    one warning block and, with --output-json, excluded.txt in its folder (data/folder.py)."""
    excluded = [
        (path, reason)
        for path, reason in spec.contents.excluded
        if spec.label_path(args.data_root, "val", path).is_file()
    ]
    if not excluded:
        return
    lines = excluded_lines(excluded)
    logger.warning("%d labelled image(s) cannot be opened and are not scored:\n%s", len(excluded), lines.rstrip())
    if args.output_json:
        output = Path(args.output_json)
        folder = output if isinstance(args.checkpoint, list) else output.parent
        write_text_atomic(folder / EXCLUDED_FILE, lines)


def evaluate_checkpoints(args, checkpoints, spec, protocol, device, collector):
    """(models, their files' metadata, results) of the checkpoints, in their order.

    Checkpoints whose backbones hold the same tensors share one evaluation pass, one backbone
    forward per window for all their heads; a backbone repeated is dropped as soon as it is read.
    """
    models, metas, groups = [], [], {}
    for checkpoint in checkpoints:
        model, meta = load_iddc_model(checkpoint, patch_size=args.expect_patch_size, num_heads=args.num_heads)
        check_clusters_fit(model, meta, spec, checkpoint)
        if args.dataset == "folder" and not models:  # the working size the first model was trained at
            trained = (meta.get("config") or {}).get("short_side")
            args.short_side = args.short_side or trained or DEFAULT_SHORT_SIDE
            spec.short_side = args.short_side
        if collector is not None:  # one checkpoint: its names are read before the long work
            logger = logging.getLogger("iddc")  # setup_logger's
            collector.names = resolve_names(checkpoint, model.num_classes, args.names, args.strict_names, logger)
        if protocol.window is not None and (protocol.window < model.patch_size or protocol.window % model.patch_size):
            raise OptionError(
                f"--window {protocol.window}: not a multiple of the checkpoint's ViT patch ({model.patch_size})"
            )
        model.to(device)
        shared = share_backbone(model, models)  # the first checkpoint of its backbone, or None
        groups.setdefault(len(models) if shared is None else shared, []).append(len(models))
        models.append(model)
        metas.append(meta)
    results = [None] * len(models)
    for group in groups.values():
        if len(group) == 1:
            model = models[group[0]]
        else:
            heads = [(models[index].head_nonlinear, models[index].classifier, None) for index in group]
            model = HeadsOnBackbone(models[group[0]].vit, heads)
        group_results = evaluate_heads(
            model,
            args.data_root,
            protocol,
            device=device,
            precision=args.precision,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            limit=args.limit,
            on_image=collector,
            crf_workers=args.crf_workers,
            dataset=spec,
        )
        for index, result in zip(group, group_results):
            results[index] = result
    return models, metas, results


def report(result, checkpoint, model, meta, spec, protocol, args, commit, path, logger):
    """The table of one checkpoint in the log and, with ``path``, its results JSON and config."""
    names = spec.class_names
    logger.info(
        "%s: %s on %d images (%s, %s, %s) in %.1f s\n%s",
        spec.name,
        protocol.name,
        result.num_images,
        checkpoint,
        model.backbone_name,
        args.precision,
        result.seconds,
        format_table(result, names),
    )
    logger.info("pixel Acc %.2f  mIoU %.2f", result.metrics["acc"], result.metrics["miou"])
    many_to_one = result.metrics.get("many_to_one")
    if many_to_one is not None:
        logger.info(
            "%d clusters for %d classes, many-to-one: pixel Acc %.2f  mIoU %.2f",
            model.num_classes,
            spec.num_classes,
            many_to_one["acc"],
            many_to_one["miou"],
        )
    if path is None:
        return
    output = result.as_dict(names)
    output.update(
        dataset=spec.name,
        checkpoint=str(checkpoint),
        checkpoint_meta_epoch=meta.get("epoch"),
        backbone=model.backbone_name,
        git_commit=commit,
        config=vars(args),
    )
    # For scripts/summarize.py: what was evaluated and the training seed, when the checkpoint records it.
    output.update(method="iddc", seed=(meta.get("config") or {}).get("seed"))
    replaced = path.exists()
    write_text_atomic(path, json.dumps(output, indent=1))
    save_config(args, path.with_suffix(".config.yaml"))
    logger.info("results written to %s%s", path, " (it replaces the results that file held)" if replaced else "")


if __name__ == "__main__":
    sys.exit(main())
