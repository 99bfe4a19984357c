"""See IDDC work end to end, offline, on CPU, in a few minutes: no download, no COCO.

    python demo.py [--output-dir outputs/demo] [--backbone-weights dino_deitsmall16_pretrain.pth]

It writes a small synthetic scene dataset in the COCO-Stuff layout, trains IDDC on it with
train.py, evaluates the result with eval.py (sliding protocol) and leaves the metrics and
pictures in the output folder. It uses the real DINO ViT-S/16 weights when they are in the torch
hub cache or given with --backbone-weights; otherwise a randomly initialised ViT-S/16, which it
says plainly, since such numbers say nothing about the paper.
"""

import json
import sys
from pathlib import Path

import torch

import eval as eval_cli
import train as train_cli
from data.synthetic import write_synthetic_cocostuff
from engine.tensorboard import require_tensorboard
from modules.backbones import release_cache_path
from modules.vit import VisionTransformer
from modules.weights import save_atomic
from utils.cli import ArgumentParser, check_at_least, check_finite, entry_point, resolve_device
from utils.errors import OptionError
from utils.files import check_writable_dir, write_text_atomic


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--output-dir", default="outputs/demo", help="synthetic data, run, metrics and pictures go here"
    )
    parser.add_argument(
        "--backbone-weights", default=None, help="DINO ViT-S/16 release file (default: the hub cache, else random)"
    )
    parser.add_argument("--train-images", type=int, default=48, help="synthetic training images")
    parser.add_argument("--val-images", type=int, default=12, help="synthetic validation images")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=8, help="training batch")
    parser.add_argument(
        "--lr", type=float, default=5e-3, help="higher than the paper's 5e-4: the demo trains for a few dozen steps"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic scenes, random backbone and training")
    return parser


def choose_backbone(weights, output_dir, seed):
    """(file, description): the given file, the cached official weights, or a random ViT-S/16."""
    if weights:
        return Path(weights), f"DINO ViT-S/16 weights from {weights}"
    cached = release_cache_path("dino_vits16")
    if cached.is_file():
        return cached, f"official DINO ViT-S/16 weights ({cached})"
    torch.manual_seed(seed)
    random_file = output_dir / "random_vits16.pth"
    save_atomic(VisionTransformer(patch_size=16).state_dict(), random_file)
    return (
        random_file,
        "RANDOMLY INITIALISED ViT-S/16 (no DINO weights found): the numbers show the pipeline runs, "
        "not what IDDC achieves",
    )


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    for option in ("train_images", "val_images", "epochs"):
        check_at_least(getattr(args, option), "--" + option.replace("_", "-"), 1)
    check_at_least(args.batch_size, "--batch-size", 2)
    check_at_least(args.train_images, "--train-images", args.batch_size)
    check_finite(args.lr, "--lr", positive=True)
    device = resolve_device(args.device)
    if args.backbone_weights and not Path(args.backbone_weights).is_file():
        raise OptionError(f"--backbone-weights {args.backbone_weights}: no such file")
    require_tensorboard()  # train.py's: checked before the synthetic data is written
    output_dir = check_writable_dir(args.output_dir, "--output-dir")
    debug = ["--debug"] if args.debug else []
    data_root = output_dir / "data"
    write_synthetic_cocostuff(
        data_root,
        num_train=args.train_images,
        num_val=args.val_images,
        sizes=((320, 256), (256, 320), (288, 288), (352, 240)),
        seed=args.seed,
    )
    backbone_file, backbone_note = choose_backbone(args.backbone_weights, output_dir, args.seed)
    print(f"demo: synthetic COCO-Stuff layout in {data_root}; backbone: {backbone_note}", flush=True)

    run_dir = output_dir / "train"
    code = train_cli.main(
        [
            "--data-root",
            str(data_root),
            "--backbone-weights",
            str(backbone_file),
            "--output-dir",
            str(run_dir),
            "--epochs",
            str(args.epochs),
            "--batch-size",
            str(args.batch_size),
            "--lr",
            str(args.lr),
            "--seed",
            str(args.seed),
            "--device",
            device,
            "--num-workers",
            "2",
            "--log-every",
            "5",
            "--val-protocol",
            "resize320",
            "--overwrite",
            *debug,  # the demo's own folder: a second demo replaces the first
        ]
    )
    if code:
        return code
    metrics_file = output_dir / "metrics.json"
    code = eval_cli.main(
        [
            "--data-root",
            str(data_root),
            "--checkpoint",
            str(run_dir / "last_model.pth"),
            "--device",
            device,
            "--protocol",
            "sliding",
            "--output-json",
            str(metrics_file),
            "--save-visuals",
            str(output_dir / "pictures"),
            "--num-visuals",
            "6",
            *debug,
        ]
    )
    if code:
        return code
    metrics = json.loads(metrics_file.read_text())
    metrics.update(
        backbone=backbone_note,
        random_backbone=backbone_note.startswith("RANDOM"),
        dataset="synthetic scenes (data/synthetic.py)",
    )
    write_text_atomic(metrics_file, json.dumps(metrics, indent=1))
    print(
        f"\ndemo done: pixel Acc {metrics['acc']:.2f}  mIoU {metrics['miou']:.2f} "
        f"(sliding protocol, last model, {metrics['num_images']} synthetic images)"
    )
    print(f"backbone: {backbone_note}")
    print(f"metrics: {metrics_file}\npictures: {output_dir / 'pictures'}\ncheckpoints and logs: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
