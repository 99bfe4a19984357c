"""The "backbone + k-means" baseline row of the peers' tables, evaluated like IDDC.

    python baseline_kmeans.py --data-root DIR --backbone dino_vits16 --output-json outputs/kmeans_vits16.json
    python baseline_kmeans.py --data-root DIR --backbone dino_vits8 --protocol center320 --flip --crf \
        --output-json out.json

Frozen backbone features of patches sampled from the training split are L2-normalised and
clustered with faiss k-means (K = the dataset's number of classes, as the one-to-one Hungarian
matching needs). At evaluation the cosine
similarities of every patch to the normalised centroids (times --logit-scale) serve as logits, so
windows, flips and the CRF work as for IDDC, and the clusters are scored with the same evaluate()
and Hungarian matching. The output JSON has eval.py's fields plus ``method``, ``backbone`` and
``kmeans`` (settings and inertia).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from data.registry import DATASET_NAMES, DEFAULT_DATASET, get_dataset
from data.spec import SegmentationEval
from data.transforms import CenterCropTransform
from engine.crf import require_pydensecrf
from engine.evaluation import PROTOCOLS, default_loader_workers, evaluate, make_protocol
from modules.backbones import BACKBONES, build_backbone
from modules.kmeans import DEFAULT_LOGIT_SCALE, KMeansSegmenter, fit_kmeans, require_faiss, sample_features
from modules.weights import save_atomic
from utils.cli import ArgumentParser, check_at_least, check_finite, entry_point, resolve_device
from utils.config import parse_args_with_config, save_config
from utils.files import check_writable_file, write_text_atomic
from utils.log import git_commit, setup_logger


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=None, help="YAML file of defaults (flags override it)")
    parser.add_argument(
        "--data-root",
        default=None,
        required_unless_config=True,
        help="dataset root (train split for fitting, val for scoring)",
    )
    parser.add_argument(
        "--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET, help="benchmark (docs/datasets.md)"
    )
    parser.add_argument("--backbone", choices=BACKBONES, default="dino_vits16", help="frozen backbone")
    parser.add_argument(
        "--backbone-weights",
        default=None,
        help="backbone release file; default: the official weights (hub cache or download)",
    )
    parser.add_argument(
        "--num-samples", type=int, default=100_000, help="patch features sampled from the training split"
    )
    parser.add_argument(
        "--fit-images", type=int, default=2000, help="training images the samples are drawn from (random, by --seed)"
    )
    parser.add_argument(
        "--fit-size", type=int, default=320, help="training images: short side to this, centre crop (bilinear)"
    )
    parser.add_argument("--iterations", type=int, default=100, help="k-means iterations per run")
    parser.add_argument("--restarts", type=int, default=5, help="k-means runs; the one with the lowest inertia is kept")
    parser.add_argument("--seed", type=int, default=0, help="image choice, patch sampling and k-means initialisation")
    parser.add_argument(
        "--logit-scale",
        type=float,
        default=DEFAULT_LOGIT_SCALE,
        help="logits = scale * cosine similarity (STEGO's cluster probe: 2)",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, default="center320", help="evaluation protocol (see eval.py)")
    parser.add_argument(
        "--score-size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="sliding protocol's scoring grid (default: the dataset's)",
    )
    parser.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flip averaging (default: on for sliding, off otherwise)",
    )
    parser.add_argument(
        "--image-interpolation", choices=("nearest", "bilinear"), default="nearest", help="center320 image resizing"
    )
    parser.add_argument("--crf", action="store_true", help="refine with STEGO's dense CRF before the argmax")
    parser.add_argument(
        "--crf-workers", type=int, default=None, help="CRF processes (default: CPU cores, at most 8; 0: none)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="backbone forwards: fp32, or bf16 autocast"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images (windows for sliding) per backbone forward")
    parser.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data-loading processes (default: 2 on CUDA, 0 on CPU, as eval.py)",
    )
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N validation images")
    parser.add_argument("--save-centroids", default=None, metavar="FILE", help="also write the centroids (torch file)")
    parser.add_argument("--output-json", default=None, help="write the results here")
    return parser


def check_options(parser, args):
    """Every option that can be wrong, and the output locations, before any model is built."""
    for option in ("num_samples", "fit_images", "fit_size", "iterations", "restarts", "batch_size", "limit"):
        check_at_least(getattr(args, option), "--" + option.replace("_", "-"), 1)
    check_at_least(args.num_workers, "--num-workers", 0)
    check_at_least(args.crf_workers, "--crf-workers", 0)
    for side in args.score_size or ():
        check_at_least(side, "--score-size", 1)
    check_finite(args.logit_scale, "--logit-scale", positive=True)
    args.device = resolve_device(args.device)
    if args.num_workers is None:
        args.num_workers = default_loader_workers(args.device)
    inputs = [args.backbone_weights, args.config]
    if args.output_json:
        output = Path(args.output_json)
        for path in (output, output.with_suffix(".config.yaml")):
            check_writable_file(path, "--output-json", inputs=inputs)
    if args.save_centroids:
        check_writable_file(args.save_centroids, "--save-centroids", inputs=[*inputs, args.output_json])
    require_faiss()
    if args.crf:
        require_pydensecrf()


def fitting_loader(args, spec):
    """Up to --fit-images training images, chosen at random by --seed, centre-cropped to --fit-size."""
    dataset = SegmentationEval(spec, args.data_root, CenterCropTransform(args.fit_size, "bilinear"), split="train")
    generator = torch.Generator().manual_seed(args.seed)
    chosen = torch.randperm(len(dataset), generator=generator)[: args.fit_images].sort().values.tolist()
    subset = torch.utils.data.Subset(dataset, chosen)
    return torch.utils.data.DataLoader(
        subset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=list
    )


@entry_point
def main(argv=None):
    parser = build_parser()
    args = parse_args_with_config(parser, argv)
    check_options(parser, args)
    spec = get_dataset(args.dataset)
    spec.check_split_files(args.data_root, "train")  # fast scans, before the backbone is built
    spec.check_split_files(args.data_root, "val", args.limit)
    logger = setup_logger()
    commit = git_commit()
    logger.info("baseline_kmeans.py at commit %s with %s", commit, json.dumps(vars(args), sort_keys=True))
    names = spec.class_names
    num_clusters = len(names)  # one cluster a class: evaluate() matches one to one (Hungarian)
    backbone = build_backbone(args.backbone, args.backbone_weights).to(args.device)
    features = sample_features(
        backbone, fitting_loader(args, spec), args.num_samples, args.seed, args.device, args.precision
    )
    logger.info(
        "k-means: %d clusters on %d patch features (%d-d) from the training split", num_clusters, *features.shape
    )
    centroids, inertia = fit_kmeans(
        features,
        num_clusters,
        args.iterations,
        args.restarts,
        args.seed,
        use_gpu=None if args.device.startswith("cuda") else False,
    )
    model = KMeansSegmenter(backbone, centroids, args.logit_scale).to(args.device)
    protocol = make_protocol(
        args.protocol,
        args.flip,
        score_size=tuple(args.score_size or spec.score_size),
        image_interpolation=args.image_interpolation,
        crf=args.crf,
    )
    result = evaluate(
        model,
        args.data_root,
        protocol,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        limit=args.limit,
        crf_workers=args.crf_workers,
        dataset=spec,
    )
    logger.info(
        "k-means (%s, K=%d) %s%s%s on %d images: pixel Acc %.2f  mIoU %.2f",
        args.backbone,
        num_clusters,
        protocol.name,
        " +flip" if protocol.flip else "",
        " +CRF" if protocol.crf else "",
        result.num_images,
        result.metrics["acc"],
        result.metrics["miou"],
    )
    if args.save_centroids:
        save_atomic(
            {"centroids": centroids, "backbone": args.backbone, "logit_scale": args.logit_scale}, args.save_centroids
        )
    if args.output_json:
        output = result.as_dict(names)
        output.update(
            method="kmeans",
            dataset=spec.name,
            backbone=args.backbone,
            seed=args.seed,
            checkpoint=None,
            checkpoint_meta_epoch=None,
            git_commit=commit,
            config=vars(args),
            kmeans={
                "num_clusters": num_clusters,
                "num_samples": int(features.shape[0]),
                "iterations": args.iterations,
                "restarts": args.restarts,
                "seed": args.seed,
                "inertia": inertia,
                "logit_scale": args.logit_scale,
            },
        )
        path = Path(args.output_json)
        write_text_atomic(path, json.dumps(output, indent=1))
        save_config(args, path.with_suffix(".config.yaml"))
        logger.info("results written to %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
