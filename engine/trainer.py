"""The training of a run: :class:`Trainer` trains a single run or the variants of a sweep
(``engine.sweep``) on one data pipeline and one backbone pass, with their checkpoints and resume files.

Every batch goes through the frozen backbone once; each variant's head, probe, loss and optimisers
then take the step of its own run (``engine.training.train_one_epoch``). A single run is the sweep of
one variant whose folder is ``--output-dir`` itself.

Each variant has its own number of clusters K (``--num-clusters``, a sweep key): only its classifier's
width differs. The linear probe, where the training pairs carry labels, is as wide as the dataset's
C classes; without training labels there is no probe, and without a validation split no validation
metric (``best_model.pth`` is then not written). Every epoch logs label-free diagnostics of the
clusters (engine/diagnostics.py).
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
from engine.diagnostics import EMPTY_SHARE, cluster_diagnostics, diagnostic_images
from engine.evaluation import evaluate_heads, make_protocol
from engine.metrics import segmentation_metrics, selection_miou
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


def new_probe(dim, probe_classes):
    """The linear probe over ``probe_classes`` classes; None for 0 (no training labels: no probe)."""
    return LinearProbe(dim, probe_classes) if probe_classes else None


def heads_on(vit, num_clusters, probe_classes=None):
    """A model of ``num_clusters`` clusters sharing ``vit`` and a probe of ``probe_classes``
    classes (None: as many as clusters; 0: no probe), initialised without touching the global RNG
    (their values are loaded right after)."""
    with torch.random.fork_rng(devices=[]):
        probe_classes = num_clusters if probe_classes is None else probe_classes
        return IDDCModel(vit, num_classes=num_clusters), new_probe(vit.embed_dim, probe_classes)


def initial_head_states(model, head_seed, num_heads=None, num_clusters=None, probe_classes=None):
    """(head_nonlinear, classifier, probe or None) state dicts a run with ``--seed head_seed`` and
    ``--num-clusters num_clusters`` (default: ``model``'s) starts from; ``probe_classes`` as
    :func:`heads_on`'s.

    A run seeds the RNG, builds the backbone (whose modules draw their default initialisation
    before the release weights replace it), then the head and the probe: the head is drawn after
    the backbone's draws. So the backbone is built again here from the same seed, in a forked RNG
    (the run's own stream is left as it was), and ``--head-seed S`` gives the heads of ``--seed S``.
    """
    num_clusters = num_clusters or model.num_classes
    probe_classes = num_clusters if probe_classes is None else probe_classes
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(head_seed)
        twin = backbone_from_state_dict(model.backbone_name, model.vit.state_dict(), "the backbone", num_heads)
        fresh = IDDCModel(twin, num_classes=num_clusters)
        probe = new_probe(twin.embed_dim, probe_classes)
    return (
        fresh.head_nonlinear.state_dict(),
        fresh.classifier.state_dict(),
        None if probe is None else probe.state_dict(),
    )


def load_head_states(model, probe, states):
    head_state, classifier_state, probe_state = states
    model.head_nonlinear.load_state_dict(head_state)
    model.classifier.load_state_dict(classifier_state)
    if probe is not None:
        probe.load_state_dict(probe_state)


class HeadsOnBackbone(nn.Module):
    """Several heads (and probes) on one backbone: one forward gives every head's logits.

    Logits are stacked along the channels in the order given, a probe's right after its head's, so
    ``engine.evaluation.evaluate_heads`` scores them all from one backbone forward per window;
    ``head_widths`` gives each one's channels (a head's K clusters, a probe's C classes).
    """

    def __init__(self, vit, heads):
        """``heads``: (head_nonlinear, classifier, probe or None) of every model."""
        super().__init__()
        self.vit = vit
        self.head_modules = nn.ModuleList(
            nn.ModuleList(module for module in head if module is not None) for head in heads
        )
        self.head_widths = [
            module.out_channels if isinstance(module, nn.Conv2d) else module.linear_head.out_channels
            for head in self.head_modules
            for module in head[1:]
        ]
        self.num_heads = len(self.head_widths)
        self.num_classes = max(self.head_widths)
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
            logits.extend(module(codes_inter) for module in probe)  # (B, C, h, w)
        return features, None, torch.cat(logits, dim=1)  # (B, sum(head_widths), h, w)


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
# end-of-epoch-only versions lack them; probe and probe_optimizer those of runs without training labels).
RESUME_KEYS = ("model", "optimizer", "epoch", "step", "best_miou", "rng")
PROBE_KEYS = ("probe", "probe_optimizer")


def read_resume_file(path, with_probe=True):
    """A resume file written by train.py, or one error naming what it lacks (``with_probe``: the
    linear probe's weights and optimiser too)."""
    resume = load_file(path)
    required = RESUME_KEYS + (PROBE_KEYS if with_probe else ())
    missing = [key for key in required if not isinstance(resume, dict) or key not in resume]
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
        # The probe learns the dataset's C classes from the training pairs' labels, where they have some.
        self.probe_classes = self.spec.num_classes if self.spec.has_train_labels else 0
        self.validation = self.spec.has_validation(args.data_root)

    # ---------------------------------------------------------------------------------------------------- set-up
    def _load_resumes(self):
        """Each variant's resume file, at the position the sweep's manifest names (finishing a commit a
        kill interrupted: a pending file at that position replaces the older resume file)."""
        with_probe = bool(self.probe_classes)
        if not self.sweep:
            self.variants[0].resume = read_resume_file(self.output_dir / RESUME_FILE, with_probe)
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
            variant.resume = read_resume_file(path, with_probe)
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
        args = self.args
        seed_everything(args.seed)
        first = self._load_resumes() if args.resume else None
        first_clusters = self.variants[0].args.num_clusters
        if first is None:
            base = new_iddc_model(
                args.backbone, args.backbone_weights, num_classes=first_clusters, num_heads=args.num_heads
            )
        else:  # the resume file carries the backbone: no download
            path = self.variants[0].folder / RESUME_FILE
            base = model_from_iddc_state(first["model"], path, num_heads=args.num_heads, backbone=args.backbone)
        base_probe = new_probe(base.vit.embed_dim, self.probe_classes)
        # Every head is loaded before any is trained: the states of the run's own draw can be shared.
        drawn = {
            (args.seed, first_clusters): (
                base.head_nonlinear.state_dict(),
                base.classifier.state_dict(),
                None if base_probe is None else base_probe.state_dict(),
            )
        }
        for index, variant in enumerate(self.variants):
            clusters = variant.args.num_clusters
            if index == 0:
                variant.model, variant.probe = base, base_probe
            else:
                variant.model, variant.probe = heads_on(base.vit, clusters, self.probe_classes)
            if variant.resume is not None:
                state = variant.resume["model"]
                width = state["classifier"]["weight"].shape[0]
                if width != clusters:
                    raise CheckpointError(
                        f"{variant.folder / RESUME_FILE}: a run with {width} clusters cannot continue with "
                        f"--num-clusters {clusters}; pass --num-clusters {width}"
                    )
                load_head_states(
                    variant.model,
                    variant.probe,
                    (state["head_nonlinear"], state["classifier"], variant.resume.get("probe")),
                )
            else:
                key = (variant.args.head_seed, clusters)
                if key not in drawn:
                    drawn[key] = initial_head_states(
                        base, variant.args.head_seed, args.num_heads, clusters, self.probe_classes
                    )
                load_head_states(variant.model, variant.probe, drawn[key])
        self.vit = base.vit
        if self.sweep:
            self.check_disk_space()

    def _setup_variant(self, variant):
        vargs = variant.args
        variant.model.to(self.device)
        head = TrainableHead(variant.model)
        optimizer = torch.optim.Adam(head.parameters(), lr=vargs.lr)
        probe_optimizer = None
        if variant.probe is not None:
            variant.probe.to(self.device)
            probe_optimizer = torch.optim.Adam(variant.probe.parameters(), lr=vargs.probe_lr)
        if distributed.is_main():
            save_config(vargs, variant.folder / "config.yaml")
        variant.tensorboard = TensorboardLog(variant.folder / "tensorboard")
        variant.jsonl_log = JsonlLog(variant.folder / "log.jsonl")
        epoch_sums = {}
        if variant.resume is not None:
            optimizer.load_state_dict(variant.resume["optimizer"])
            if probe_optimizer is not None:
                probe_optimizer.load_state_dict(variant.resume["probe_optimizer"])
            variant.best_miou = variant.resume["best_miou"]
            epoch_sums = variant.resume.get("epoch_sums", {})
            variant.jsonl_log.drop_after(variant.resume["step"])
        # Gradients are summed over the processes (see IDDCLoss's ``objective``), so no DDP wrapper:
        # the processes start from rank 0's weights and stay equal.
        probe_parameters = [] if variant.probe is None else list(variant.probe.parameters())
        distributed.broadcast_parameters([*head.parameters(), *probe_parameters])
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
        per_variant = 0  # the largest variant (their K may differ)
        for variant in self.variants:
            model, probe = variant.model, variant.probe
            heads = _size([*model.head_nonlinear.state_dict().values(), *model.classifier.state_dict().values()])
            probe_bytes = 0 if probe is None else _size(probe.state_dict().values())
            per_variant = max(per_variant, 2 * (backbone + heads) + 2 * (backbone + 3 * (heads + probe_bytes)))
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
        probe = {}
        if variant.probe is not None:
            probe = {"probe": variant.probe.state_dict(), "probe_optimizer": variant.run.probe_optimizer.state_dict()}
        return probe | {
            "model": iddc_state(variant.model),
            "optimizer": variant.run.optimizer.state_dict(),
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
        """Every variant's clusters (Hungarian-matched, and many-to-one where K > C) and linear probe
        (identity-matched; None without one) from one evaluation pass: one backbone forward per image
        or window for all of them, whatever their K."""
        args = self.args
        module = HeadsOnBackbone(
            self.vit,
            [(variant.model.head_nonlinear, variant.model.classifier, variant.probe) for variant in self.variants],
        )

        per_variant = 1 if self.probe_classes == 0 else 2  # its clusters, then its probe

        def on_heads(sample, preds):  # preds (heads, H, W): clusters then probe of each variant
            for index, collector in enumerate(pictures):
                collector(sample, preds[per_variant * index].cpu())

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
        if per_variant == 1:
            return [(result, None) for result in results]
        labels = np.arange(self.probe_classes)
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
        if not self.probe_classes:
            logger.info("linear probe off: --dataset %s has no training labels for it to learn", self.spec.name)
        if not self.validation:
            logger.info(
                "no validation split in %s: no validation metric, so best_model.pth is not written; "
                "use last_model.pth (the clusters' label-free diagnostics are logged every epoch)",
                args.data_root,
            )
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
        # The diagnostics' fixed sample, read once; only the main process logs them.
        sample = diagnostic_images(loader.dataset, args.seed) if distributed.is_main() else None
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
                    if variant.run.probe_optimizer is not None:
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

                diagnostics = [None] * len(variants)
                if sample is not None:
                    diagnostics = cluster_diagnostics(
                        self.vit, [run.head for run in runs], sample, self.device, args.precision
                    )
                pictures = [variant.tensorboard.pictures(self.spec.palette) for variant in variants]
                results = self.validate(args.val_protocol, pictures) if self.validation else [None] * len(variants)
                for variant, result, collector, means, diagnosed in zip(
                    variants, results, pictures, train_means, diagnostics
                ):
                    self._end_of_epoch(variant, epoch, step, result, collector, means, diagnosed)
                self.save_resumes(epoch + 1, 0, step, progress["epoch_sums"], last_epoch=epoch)
                distributed.barrier()
                if stop.requested():
                    raise stop.stopped(resume_path, epoch + 1, 0, step)

        if args.final_protocol != "none" and self.validation:
            for variant, (final, final_probe) in zip(variants, self.validate(args.final_protocol)):
                text, values = scores_text(final.metrics, final_probe)
                logger.info(self._prefix(variant) + "last model, %s: %s", args.final_protocol, text)
                variant.run.log.write(kind="final", protocol=args.final_protocol, **values)
        for variant in variants:
            variant.tensorboard.close()
        return 0

    def _end_of_epoch(self, variant, epoch, step, validation, collector, train_means, diagnostics):
        """Log a variant's diagnostics (main process) and validation (None without a validation
        split), keep its best and last checkpoints."""
        args, logger = self.args, self.logger
        if diagnostics is not None:
            logger.info(
                self._prefix(variant) + "epoch %d clusters on %d training images: %d of %d empty (share < %.1f%%), "
                "largest share %.1f%%, mean top probability %.3f",
                epoch,
                diagnostics["images"],
                diagnostics["empty_clusters"],
                diagnostics["num_clusters"],
                100 * EMPTY_SHARE,
                100 * diagnostics["largest_share"],
                diagnostics["top_probability"],
            )
            variant.run.log.write(kind="clusters", epoch=epoch, step=step, **diagnostics)
        metrics, selected = {"protocol": None}, None
        if validation is not None:
            clusters, probe_metrics = validation
            many_to_one = clusters.metrics.get("many_to_one")
            # The pictures show the match that picks the best model.
            assignment = (many_to_one or clusters.metrics)["cluster_to_class"]
            variant.tensorboard.write_pictures(collector, assignment, step)
            text, values = scores_text(clusters.metrics, probe_metrics)
            logger.info(self._prefix(variant) + "epoch %d %s: %s", epoch, args.val_protocol, text)
            variant.run.log.write(
                kind="val",
                epoch=epoch,
                step=step,
                protocol=args.val_protocol,
                **values,
                per_class_iou=dict(zip(self.spec.class_names, map(float, clusters.metrics["iou"]))),
                train=train_means,
            )
            metrics = {"protocol": args.val_protocol} | {key: values[key] for key in values if "probe" not in key}
            selected = selection_miou(clusters.metrics)
        if distributed.is_main():
            best_path, last_path = variant.folder / "best_model.pth", variant.folder / "last_model.pth"
            # ">=" as the original, which keeps the later of equal epochs
            if selected is not None and selected >= variant.best_miou:
                variant.best_miou = selected
                save_atomic(released_checkpoint(variant.model, variant.args, epoch, step, metrics), best_path)
                match = "many-to-one " if "many_to_one" in clusters.metrics else ""
                logger.info(
                    self._prefix(variant) + "best model (%smIoU %.2f, %s) saved to %s",
                    match,
                    selected,
                    args.val_protocol,
                    best_path,
                )
            save_atomic(released_checkpoint(variant.model, variant.args, epoch, step, metrics), last_path)


def scores_text(metrics, probe_metrics):
    """(readable line, logged values) of a validation: the clusters' one-to-one Acc and mIoU, their
    many-to-one ones when K > C (apart, never mixed), and the linear probe's where there is one."""
    values = {"acc": float(metrics["acc"]), "miou": float(metrics["miou"])}
    text = "clusters Acc %.2f mIoU %.2f" % (values["acc"], values["miou"])
    if probe_metrics is not None:
        values.update(probe_acc=float(probe_metrics["acc"]), probe_miou=float(probe_metrics["miou"]))
        text += " | linear probe Acc %.2f mIoU %.2f" % (values["probe_acc"], values["probe_miou"])
    many_to_one = metrics.get("many_to_one")
    if many_to_one is not None:
        values.update(acc_many_to_one=float(many_to_one["acc"]), miou_many_to_one=float(many_to_one["miou"]))
        text += " | clusters many-to-one Acc %.2f mIoU %.2f" % (values["acc_many_to_one"], values["miou_many_to_one"])
    return text, values
