"""The training of a run: :class:`Trainer` trains a single run or the variants of a sweep
(``engine.sweep``) on one data pipeline and one backbone pass, with their checkpoints and resume files.

Every batch goes through the frozen backbone once; each variant's head, probe, loss and optimisers
then take the step of its own run (``engine.training.train_one_epoch``). A single run is the sweep of
one variant whose folder is ``--output-dir`` itself.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from data.folder import EXCLUDED_FILE, FILE_LIST, excluded_lines
from data.registry import get_dataset
from engine.evaluation import evaluate_heads, make_protocol
from engine.metrics import segmentation_metrics
from engine.sweep import MANIFEST_FILE, MANIFEST_FORMAT, PENDING_RESUME_FILE, RESUME_FILE, RUN_FILES, read_manifest
from engine.tensorboard import TensorboardLog
from engine.training import (
    HeadRun,
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
from modules.backbones import backbone_from_state_dict
from modules.checkpoint import iddc_state, model_from_iddc_state, new_iddc_model
from modules.loss import IDDCLoss
from modules.model import IDDCModel, LinearProbe
from modules.weights import CheckpointError, load_file, save_atomic
from utils import distributed
from utils.config import save_config
from utils.errors import OutputError
from utils.files import write_text_atomic
from utils.log import JsonlLog, LogGroup, git_commit

# ------------------------------------------------------------------------------------------------ heads on a backbone


def heads_on(vit, num_classes):
    """A model sharing ``vit`` and a probe, initialised without touching the global RNG (their
    values are loaded right after)."""
    with torch.random.fork_rng(devices=[]):
        return IDDCModel(vit, num_classes=num_classes), LinearProbe(vit.embed_dim, num_classes)


def initial_head_states(model, head_seed, num_heads=None):
    """(head_nonlinear, classifier, probe) state dicts a run with ``--seed head_seed`` starts from.

    A run seeds the RNG, builds the backbone (whose modules draw their default initialisation
    before the release weights replace it), then the head and the probe: the head is drawn after
    the backbone's draws. So the backbone is built again here from the same seed, in a forked RNG
    (the run's own stream is left as it was), and ``--head-seed S`` gives the heads of ``--seed S``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed)
        twin = backbone_from_state_dict(model.backbone_name, model.vit.state_dict(), "the backbone", num_heads)
        fresh = IDDCModel(twin, num_classes=model.num_classes)
        probe = LinearProbe(twin.embed_dim, model.num_classes)
    return fresh.head_nonlinear.state_dict(), fresh.classifier.state_dict(), probe.state_dict()


def load_head_states(model, probe, states):
    head_state, classifier_state, probe_state = states
    model.head_nonlinear.load_state_dict(head_state)
    model.classifier.load_state_dict(classifier_state)
    probe.load_state_dict(probe_state)


class HeadsOnBackbone(nn.Module):
    """Several heads (and probes) on one backbone: one forward gives every head's logits.

    Logits are stacked along the channels in the order given, a probe's right after its head's, so
    ``engine.evaluation.evaluate_heads`` scores them all from one backbone forward per window.
    """

    def __init__(self, vit, heads):
        """``heads``: (head_nonlinear, classifier, probe or None) of every model."""
        super().__init__()
        self.vit = vit
        self.head_modules = nn.ModuleList(
            nn.ModuleList(module for module in head if module is not None) for head in heads
        )
        self.num_heads = sum(len(head) - 1 for head in self.head_modules)
        self.num_classes = heads[0][1].out_channels
        self.patch_size = vit.patch_size

    def train(self, mode=True):
        """The backbone stays in eval mode, as in IDDCModel."""
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, images):
        with torch.no_grad():
            features = self.vit(images)  # (B, C, h, w)
        logits = []
        for head_nonlinear, classifier, *probe in self.head_modules:
            codes_inter = head_nonlinear(features)  # (B, C, h, w)
            logits.append(classifier(codes_inter))  # (B, K, h, w)
            logits.extend(module(codes_inter) for module in probe)  # (B, K, h, w)
        return features, None, torch.cat(logits, dim=1)  # (B, heads * K, h, w)


def same_backbone(vit_a, vit_b):
    """Whether two backbones hold the same architecture and the same tensors (names are not compared)."""
    if type(vit_a) is not type(vit_b) or vit_a.num_heads != vit_b.num_heads:
        return False
    if getattr(vit_a, "interpolation", None) != getattr(vit_b, "interpolation", None):  # DINO's or DINOv2's
        return False
    a, b = vit_a.state_dict(), vit_b.state_dict()
    return a.keys() == b.keys() and all(
        a[key].shape == b[key].shape and a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]) for key in a
    )


def share_backbone(model, models):
    """The index of the first of ``models`` whose backbone equals ``model``'s, which then uses that
    backbone (its own copy is freed); None when no backbone equals it."""
    for index, other in enumerate(models):
        if same_backbone(other.vit, model.vit):
            model.backbone.model = other.vit
            return index
    return None


# ---------------------------------------------------------------------------------------------------------- training


def released_checkpoint(model, args, epoch, step, metrics):
    """Released layout (loads into the original code) plus plain-valued extras."""
    return iddc_state(model, config=vars(args), epoch=epoch, step=step, metrics=metrics, format="iddc-v1")


# What a resume file must hold to continue a run (resume_at and epoch_sums are optional: files of
# end-of-epoch-only versions lack them).
RESUME_KEYS = ("model", "probe", "optimizer", "probe_optimizer", "epoch", "step", "best_miou", "rng")


def read_resume_file(path):
    """A resume file written by train.py, or one error naming what it lacks."""
    resume = load_file(path)
    missing = [key for key in RESUME_KEYS if not isinstance(resume, dict) or key not in resume]
    if missing:
        raise CheckpointError(
            f"{path}: not a resume file written by train.py (it lacks {', '.join(missing)}); "
            f"--resume continues a run from the {RESUME_FILE} that train.py saved in --output-dir"
        )
    return resume


def resume_position(resume):
    """(epoch, batch) a resume file continues at; files of end-of-epoch-only versions continue after 'epoch'."""
    at = resume.get("resume_at")
    return (resume["epoch"] + 1, 0) if at is None else (at["epoch"], at["batch"])


def _position(resume):
    epoch, batch = resume_position(resume)
    return {"epoch": epoch, "batch": batch, "step": resume["step"]}


def _size(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _bytes_text(count):
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


class Trainer:
    """The training of one run or of a sweep's variants on one data pipeline and backbone pass."""

    def __init__(self, args, variants, device, output_dir, sweep, spec=None):
        self.args = args
        self.variants = variants
        self.device = device
        self.output_dir = Path(output_dir)
        self.logger = None  # train() gets it: the log file is written only once every input is read
        self.sweep = sweep
        self.disk_message = None
        self.commit = git_commit()
        self.spec = spec or get_dataset(args.dataset, args.data_root)  # a folder's, as train.py scanned it
        self.damaged_seen = set()  # items this process replaced since the last report
        self.damaged_reported = set()

    # ---------------------------------------------------------------------------------------------------- set-up
    def _load_resumes(self):
        """Each variant's resume file, at the position the sweep's manifest names (finishing a commit a
        kill interrupted: a pending file at that position replaces the older resume file)."""
        if not self.sweep:
            self.variants[0].resume = read_resume_file(self.output_dir / RESUME_FILE)
            return self.variants[0].resume
        position = read_manifest(self.output_dir)["position"]
        if distributed.is_main():
            for variant in self.variants:
                pending = variant.folder / PENDING_RESUME_FILE
                if pending.is_file():
                    if _position(load_file(pending)) == position:
                        os.replace(pending, variant.folder / RESUME_FILE)
                    else:  # written before a kill that came before the manifest: the sweep never reached it
                        pending.unlink()
        distributed.barrier()
        for index, variant in enumerate(self.variants):
            path = variant.folder / RESUME_FILE
            variant.resume = read_resume_file(path)
            if _position(variant.resume) != position:
                raise CheckpointError(
                    f"{path}: holds epoch {_position(variant.resume)['epoch']} step {variant.resume['step']}, "
                    f"but the sweep's {MANIFEST_FILE} names epoch {position['epoch']} step {position['step']}: "
                    f"this folder was changed outside the sweep"
                )
            if index:  # one backbone for every variant: the first file's
                if not all(
                    torch.equal(value, self.variants[0].resume["model"]["backbone"][key])
                    for key, value in variant.resume["model"]["backbone"].items()
                ):
                    raise CheckpointError(f"{path}: its backbone differs from {self.variants[0].folder / RESUME_FILE}")
                variant.resume["model"]["backbone"] = None
        return self.variants[0].resume

    def load(self):
        """Read every input (resume files, the backbone) and build the heads, writing nothing: a run
        refused here leaves its folder as it was."""
        args, spec = self.args, self.spec
        seed_everything(args.seed)
        first = self._load_resumes() if args.resume else None
        if first is None:
            base = new_iddc_model(
                args.backbone, args.backbone_weights, num_classes=spec.num_classes, num_heads=args.num_heads
            )
        else:  # the resume file carries the backbone: no download
            path = self.variants[0].folder / RESUME_FILE
            base = model_from_iddc_state(first["model"], path, num_heads=args.num_heads, backbone=args.backbone)
            if base.num_classes != spec.num_classes:
                raise CheckpointError(
                    f"{path}: a run with {base.num_classes} clusters cannot continue on "
                    f"--dataset {spec.name} ({spec.num_classes} classes)"
                )
        base_probe = LinearProbe(base.vit.embed_dim, base.num_classes)
        # Every head is loaded before any is trained: the states of the run's own draw can be shared.
        drawn = {args.seed: (base.head_nonlinear.state_dict(), base.classifier.state_dict(), base_probe.state_dict())}
        for index, variant in enumerate(self.variants):
            variant.model, variant.probe = (base, base_probe) if index == 0 else heads_on(base.vit, base.num_classes)
            if variant.resume is not None:
                state = variant.resume["model"]
                load_head_states(
                    variant.model,
                    variant.probe,
                    (state["head_nonlinear"], state["classifier"], variant.resume["probe"]),
                )
            else:
                head_seed = variant.args.head_seed
                if head_seed not in drawn:
                    drawn[head_seed] = initial_head_states(base, head_seed, args.num_heads)
                load_head_states(variant.model, variant.probe, drawn[head_seed])
        self.vit = base.vit
        if self.sweep:
            self.check_disk_space()

    def _setup_variant(self, variant):
        vargs = variant.args
        variant.model.to(self.device)
        variant.probe.to(self.device)
        head = TrainableHead(variant.model)
        optimizer = torch.optim.Adam(head.parameters(), lr=vargs.lr)
        probe_optimizer = torch.optim.Adam(variant.probe.parameters(), lr=vargs.probe_lr)
        if distributed.is_main():
            save_config(vargs, variant.folder / "config.yaml")
        variant.tensorboard = TensorboardLog(variant.folder / "tensorboard")
        variant.jsonl_log = JsonlLog(variant.folder / "log.jsonl")
        epoch_sums = {}
        if variant.resume is not None:
            optimizer.load_state_dict(variant.resume["optimizer"])
            probe_optimizer.load_state_dict(variant.resume["probe_optimizer"])
            variant.best_miou = variant.resume["best_miou"]
            epoch_sums = variant.resume.get("epoch_sums", {})
            variant.jsonl_log.drop_after(variant.resume["step"])
        # Gradients are summed over the processes (see IDDCLoss's ``objective``), so no DDP wrapper:
        # the processes start from rank 0's weights and stay equal.
        distributed.broadcast_parameters([*head.parameters(), *variant.probe.parameters()])
        loss_fn = IDDCLoss(
            vargs.pos_threshold, vargs.neg_threshold, vargs.neg_weight, vargs.balance_weight, vargs.num_negatives
        )
        log = LogGroup(variant.jsonl_log, variant.tensorboard)  # every logged value goes to both
        variant.run = HeadRun(head, variant.probe, loss_fn, optimizer, probe_optimizer, log, variant.name, epoch_sums)

    def check_disk_space(self):
        """Refuse a sweep whose checkpoints do not fit on the disk, before anything is written.

        Each variant holds best and last checkpoints (backbone + head) and a resume file (backbone,
        head, probe and their Adam moments), written beside the previous one while the sweep commits.
        """
        backbone = _size(self.vit.state_dict().values())
        model, probe = self.variants[0].model, self.variants[0].probe
        heads = _size([*model.head_nonlinear.state_dict().values(), *model.classifier.state_dict().values()])
        probe_bytes = _size(probe.state_dict().values())
        per_variant = 2 * (backbone + heads) + 2 * (backbone + 3 * (heads + probe_bytes))
        needed = per_variant * len(self.variants)
        replaced = sum(
            (variant.folder / name).stat().st_size
            for variant in self.variants
            for name in (*RUN_FILES, PENDING_RESUME_FILE)
            if (variant.folder / name).is_file()
        )
        existing = next(folder for folder in (self.output_dir, *self.output_dir.parents) if folder.exists())
        free = shutil.disk_usage(existing).free  # the folder itself is made only when the sweep starts writing
        message = (
            f"{len(self.variants)} variants x {_bytes_text(per_variant)} (best, last and resume checkpoints, each "
            f"with the backbone) = {_bytes_text(needed)}"
        )
        if needed > free + replaced:
            raise OutputError(
                f"--output-dir {self.output_dir}: the sweep writes up to {message}, but the disk has "
                f"{_bytes_text(free)} free; free some space, choose another --output-dir or sweep fewer variants"
            )
        self.disk_message = f"the sweep writes up to {message}; {_bytes_text(free)} free in {self.output_dir}"

    # ------------------------------------------------------------------------------------------------ checkpoints
    def resume_state(self, variant, epoch, batch, step, epoch_sums):
        """Everything to continue at ``batch`` of ``epoch`` exactly (weights, optimisers, position)."""
        vargs = variant.args
        return {
            "model": iddc_state(variant.model),
            "probe": variant.probe.state_dict(),
            "optimizer": variant.run.optimizer.state_dict(),
            "probe_optimizer": variant.run.probe_optimizer.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_miou": variant.best_miou,
            "resume_at": {"epoch": epoch, "batch": batch},
            "epoch_sums": epoch_sums,
            "rng": rng_states(),
            "config": vars(vargs),
            "git_commit": self.commit,
            "scheduler": {
                "kind": "poly",
                "power": vargs.lr_power,
                "epochs": vargs.epochs,
                "base_lrs": [vargs.lr, vargs.probe_lr],
            },
        }

    def save_resumes(self, epoch, batch, step, epoch_sums, last_epoch=None):
        """Every variant's resume file at one position; for a sweep, the files first (as pending
        files), then the manifest naming their position, then the renames, so that whenever a kill
        comes the manifest names a position every variant can be resumed at."""
        if not distributed.is_main():
            return
        extra = {} if last_epoch is None else {"epoch": last_epoch}
        if not self.sweep:
            variant = self.variants[0]
            save_atomic(
                self.resume_state(variant, epoch, batch, step, epoch_sums[0]) | extra, variant.folder / RESUME_FILE
            )
            return
        for variant, sums in zip(self.variants, epoch_sums):
            save_atomic(
                self.resume_state(variant, epoch, batch, step, sums) | extra, variant.folder / PENDING_RESUME_FILE
            )
        self.write_manifest({"epoch": epoch, "batch": batch, "step": step})
        for variant in self.variants:
            os.replace(variant.folder / PENDING_RESUME_FILE, variant.folder / RESUME_FILE)

    def write_manifest(self, position):
        manifest = {
            "format": MANIFEST_FORMAT,
            "variants": [
                {"name": variant.name, "folder": variant.name, "overrides": variant.overrides}
                for variant in self.variants
            ],
            "position": position,
            "config": vars(self.args),
            "git_commit": self.commit,
        }
        write_text_atomic(self.output_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, default=str))

    # ---------------------------------------------------------------------------------------------------- evaluation
    def validate(self, protocol_name, pictures=None):
        """Every variant's clusters (Hungarian-matched) and linear probe (identity-matched) from one
        evaluation pass: one backbone forward per image or window for all of them."""
        args = self.args
        module = HeadsOnBackbone(
            self.vit,
            [(variant.model.head_nonlinear, variant.model.classifier, variant.probe) for variant in self.variants],
        )

        def on_heads(sample, preds):  # preds (2 * variants, H, W): clusters then probe of each variant
            for index, collector in enumerate(pictures):
                collector(sample, preds[2 * index].cpu())

        results = evaluate_heads(
            module,
            args.data_root,
            make_protocol(protocol_name, score_size=self.spec.score_size),  # the dataset's sliding grid
            device=self.device,
            precision=args.precision,
            batch_size=args.val_batch_size,
            num_workers=min(args.num_workers, 4),
            limit=args.val_limit,
            on_image_heads=on_heads if pictures else None,
            dataset=self.spec,
        )
        labels = np.arange(self.variants[0].model.num_classes)
        return [
            (results[2 * i], segmentation_metrics(results[2 * i + 1].confusion, labels))
            for i in range(len(self.variants))
        ]

    # ------------------------------------------------------------------------------------------- folder's files
    def _folder_files(self, first_start):
        """A ``folder`` run's file list (saved once: --resume trains on it) and the scan's report: the
        images that cannot be opened in one warning block and in excluded.txt, the folders skipped."""
        contents = self.spec.contents
        for folder, reason in contents.unreadable_dirs:
            self.logger.warning("%s: folder skipped, it cannot be read (%s)", self.spec.root / folder, reason)
        if not first_start or not distributed.is_main():
            return
        write_text_atomic(self.output_dir / FILE_LIST, contents.as_json())
        self.logger.info(
            "folder %s: %d training image(s), %d labelled (validation), %d other file(s) skipped; list in %s",
            self.spec.root,
            len(contents.train),
            len(contents.val),
            contents.skipped,
            self.output_dir / FILE_LIST,
        )
        if contents.excluded:
            self._write_excluded(contents.excluded, "cannot be opened and are left out")

    def _write_excluded(self, entries, what):
        """Warn about ``entries`` ((relative path, reason)) in one block and add them to excluded.txt."""
        path = self.output_dir / EXCLUDED_FILE
        before = path.read_text(encoding="utf-8") if path.is_file() else ""
        entries = [entry for entry in entries if excluded_lines([entry]) not in before]  # a resumed run's repeats
        if not entries:
            return
        self.logger.warning(
            "%d image(s) %s (listed in %s):\n%s",
            len(entries),
            what,
            path,
            "".join(f"  {line}" for line in excluded_lines(entries).splitlines(keepends=True)).rstrip(),
        )
        write_text_atomic(path, before + excluded_lines(entries))

    def _report_damaged(self, pairs):
        """The images every process replaced during the epoch (a truncated JPEG passes the header
        scan), gathered to rank 0, which names the new ones in a warning and in excluded.txt."""
        if not self.spec.substitutes_damaged:
            return
        mask = torch.zeros(len(pairs.items), dtype=torch.int32, device=self.device)  # (items,)
        mask[sorted(self.damaged_seen)] = 1
        self.damaged_seen.clear()
        indices = torch.nonzero(distributed.all_reduce_sum(mask)).flatten().tolist()
        new = [pairs.items[index] for index in indices if pairs.items[index] not in self.damaged_reported]
        self.damaged_reported.update(new)
        if new and distributed.is_main():
            entries = [(relative, "fails to decode; replaced by another image in training") for relative in new]
            self._write_excluded(entries, "failed to decode and were replaced by other images")

    def _prefix(self, variant):
        return f"[{variant.name}] " if variant.name else ""

    # ------------------------------------------------------------------------------------------------------ the loop
    def train(self, logger):
        """The loop, after :meth:`load`: every variant's files, then the epochs."""
        self.logger = logger
        args, variants = self.args, self.variants
        logger.info(
            "train.py at commit %s, %d process(es), config:\n%s",
            self.commit,
            distributed.world_size(),
            json.dumps(vars(args), indent=1, sort_keys=True, default=str),
        )
        if self.sweep:
            logger.info(
                "sweep of %d variants on one backbone pass: %s", len(variants), ", ".join(v.name for v in variants)
            )
            logger.info(self.disk_message)
        for variant in variants:
            self._setup_variant(variant)
        if args.dataset == "folder":
            self._folder_files(first_start=variants[0].resume is None)
        start_epoch, start_batch, step = 0, 0, 0
        first = variants[0].resume
        if first is not None:
            start_epoch, start_batch = resume_position(first)
            step = first["step"]
            restore_rng_states(first["rng"])
            where = self.output_dir / (MANIFEST_FILE if self.sweep else RESUME_FILE)
            logger.info("resuming from %s at epoch %d, batch %d (step %d)", where, start_epoch, start_batch, step)
            for variant in variants:
                variant.resume = None  # its tensors are in the model, probe and optimisers now
        if self.sweep and distributed.is_main() and first is None:
            self.write_manifest(None)
        loader = train_loader(
            args.data_root, args.batch_size, args.seed, args.num_workers, self.device, args.train_limit, self.spec
        )
        if start_epoch >= args.epochs:
            logger.info(
                "nothing to do: epoch %d already done; pass --epochs > %d to train further",
                start_epoch - 1,
                start_epoch,
            )
        resume_path = self.output_dir / (MANIFEST_FILE if self.sweep else RESUME_FILE)
        runs = [variant.run for variant in variants]

        with StopRequests() as stop:
            progress = {"batch": start_batch, "step": step, "epoch_sums": [dict(run.epoch_sums) for run in runs]}
            for epoch in range(start_epoch, args.epochs):
                for variant in variants:
                    vargs = variant.args
                    set_lr(variant.run.optimizer, poly_lr(vargs.lr, epoch, args.epochs, vargs.lr_power))
                    set_lr(variant.run.probe_optimizer, poly_lr(vargs.probe_lr, epoch, args.epochs, vargs.lr_power))
                batches_per_epoch = loader.batch_sampler.batches_per_epoch

                def after_step(batches_done, step, epoch=epoch):
                    progress.update(batch=batches_done, step=step, epoch_sums=[dict(run.epoch_sums) for run in runs])
                    if stop.requested():
                        raise StopTraining
                    if args.checkpoint_every and step % args.checkpoint_every == 0 and batches_done < batches_per_epoch:
                        self.save_resumes(epoch, batches_done, step, progress["epoch_sums"])

                try:
                    step, train_means = train_one_epoch(
                        self.vit,
                        runs,
                        loader,
                        epoch=epoch,
                        step=progress["step"],
                        seed=args.seed,
                        device=self.device,
                        precision=args.precision,
                        log_every=args.log_every,
                        logger=logger,
                        start_batch=progress["batch"],
                        after_step=after_step,
                        damaged=self.damaged_seen,
                    )
                except Exception as err:  # a loader worker killed by the same Ctrl-C also ends here
                    if not (isinstance(err, StopTraining) or stop.requested(local=True)):
                        raise
                    self.save_resumes(epoch, progress["batch"], progress["step"], progress["epoch_sums"])
                    raise stop.stopped(resume_path, epoch, progress["batch"], progress["step"])
                for run in runs:
                    run.epoch_sums = {}
                progress = {"batch": 0, "step": step, "epoch_sums": [{} for _ in runs]}
                self._report_damaged(loader.dataset)

                pictures = [variant.tensorboard.pictures(self.spec.palette) for variant in variants]
                results = self.validate(args.val_protocol, pictures)
                for variant, (clusters, probe_metrics), collector, means in zip(
                    variants, results, pictures, train_means
                ):
                    self._end_of_epoch(variant, epoch, step, clusters, probe_metrics, collector, means)
                self.save_resumes(epoch + 1, 0, step, progress["epoch_sums"], last_epoch=epoch)
                distributed.barrier()
                if stop.requested():
                    raise stop.stopped(resume_path, epoch + 1, 0, step)

        if args.final_protocol != "none":
            for variant, (final, final_probe) in zip(variants, self.validate(args.final_protocol)):
                logger.info(
                    self._prefix(variant)
                    + "last model, %s: clusters Acc %.2f mIoU %.2f | linear probe Acc %.2f mIoU %.2f",
                    args.final_protocol,
                    final.metrics["acc"],
                    final.metrics["miou"],
                    final_probe["acc"],
                    final_probe["miou"],
                )
                variant.run.log.write(
                    kind="final",
                    protocol=args.final_protocol,
                    acc=float(final.metrics["acc"]),
                    miou=float(final.metrics["miou"]),
                    probe_acc=float(final_probe["acc"]),
                    probe_miou=float(final_probe["miou"]),
                )
        for variant in variants:
            variant.tensorboard.close()
        return 0

    def _end_of_epoch(self, variant, epoch, step, clusters, probe_metrics, collector, train_means):
        """Log a variant's validation, keep its best and last checkpoints."""
        args, logger = self.args, self.logger
        variant.tensorboard.write_pictures(collector, clusters.metrics["cluster_to_class"], step)
        miou, acc = float(clusters.metrics["miou"]), float(clusters.metrics["acc"])
        logger.info(
            self._prefix(variant) + "epoch %d %s: clusters Acc %.2f mIoU %.2f | linear probe Acc %.2f mIoU %.2f",
            epoch,
            args.val_protocol,
            acc,
            miou,
            probe_metrics["acc"],
            probe_metrics["miou"],
        )
        variant.run.log.write(
            kind="val",
            epoch=epoch,
            step=step,
            protocol=args.val_protocol,
            acc=acc,
            miou=miou,
            probe_acc=float(probe_metrics["acc"]),
            probe_miou=float(probe_metrics["miou"]),
            per_class_iou=dict(zip(self.spec.class_names, map(float, clusters.metrics["iou"]))),
            train=train_means,
        )
        metrics = {"protocol": args.val_protocol, "acc": acc, "miou": miou}
        if distributed.is_main():
            best_path, last_path = variant.folder / "best_model.pth", variant.folder / "last_model.pth"
            if miou >= variant.best_miou:  # ">=" as the original, which keeps the later of equal epochs
                variant.best_miou = miou
                save_atomic(released_checkpoint(variant.model, variant.args, epoch, step, metrics), best_path)
                logger.info(
                    self._prefix(variant) + "best model (mIoU %.2f, %s) saved to %s", miou, args.val_protocol, best_path
                )
            save_atomic(released_checkpoint(variant.model, variant.args, epoch, step, metrics), last_path)
