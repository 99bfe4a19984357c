"""See a checkpoint at work in the browser: a local page to segment your own photos, compare two
checkpoints and name the clusters (docs/app.md).

    python app.py                                   # http://127.0.0.1:7860
    python app.py --checkpoint runs/mine/last_model.pth checkpoints/cocostuff27_vits16.pth
    python app.py --host 0.0.0.0 --port 7860        # serve it to other machines (a Hugging Face Space)

Checkpoints offered: those given with --checkpoint; otherwise every file in checkpoints/
($CHECKPOINT_DIR) and every best_model.pth and last_model.pth under outputs/ and runs/ (or
--search DIR ...). A file is loaded when it is chosen; at most --max-models stay loaded. The maps
are predict.py's for the same image and options: the page calls the same functions, and each
checkpoint's names and colours are resolved as predict.py resolves them (its <stem>.clusters.yaml,
else --assignment, else "cluster N"). The page makes no request outside this machine (no analytics,
no fonts or scripts from a CDN), and has no public share link.
"""

import collections
import functools
import logging
import os
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

import predict as predict_cli
from data.photos import scan_images
from data.synthetic import make_scene
from engine.crf import PYDENSECRF_REQUIREMENT
from engine.gallery import entry_panels, find_gallery_images, scan_clusters, seeded_sample
from engine.names import colour_text, file_sha256, names_file_beside, read_names, write_names
from engine.serving import ModelCache, PageError, find_checkpoints, save_clusters_png, segment_photo
from utils.cli import ArgumentParser, check_at_least, entry_point, resolve_device
from utils.errors import OptionError, ReportedError
from utils.log import setup_logger
from utils.optional import require

PROJECT_ROOT = Path(__file__).resolve().parent
GRADIO_REQUIREMENT = "gradio>=6.31,<7"
PREVIEW_MAX_SIDE = 1600  # pictures on the page; the clusters file is always at the original size
KEPT_RESULTS = 8  # segmentations kept for the opacity slider and the legend (the newest)
DEMO_SCENES = 3
ALL_CLUSTERS = "all clusters"
# One queue for every action that runs a model: one at a time, so that two large photos never
# hold their maps at once (memory as predict.py's), and a request while one runs waits its turn.
MODEL_QUEUE = "model"
NO_CHECKPOINT = (
    "No checkpoint found. Get one with `bash val_coco27.sh` (downloads the released checkpoints into "
    "checkpoints/) or `python demo.py` (trains one in minutes on a CPU, under outputs/demo), then "
    "reload this page after restarting app.py, or pass `--checkpoint FILE`."
)
LOCAL_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
LOCAL_MONO_FONTS = ["ui-monospace", "monospace"]


def build_parser():
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="address to listen on (0.0.0.0: all); default $GRADIO_SERVER_NAME (a Space sets it), else 127.0.0.1",
    )
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")), help="port to listen on"
    )
    parser.add_argument("--checkpoint", nargs="+", default=None, metavar="FILE", help="the checkpoints to offer")
    parser.add_argument(
        "--search",
        nargs="+",
        default=None,
        metavar="DIR",
        help="folders searched for best_model.pth and last_model.pth (default: outputs/ and runs/)",
    )
    parser.add_argument("--examples", default=None, metavar="DIR", help="images offered as examples (any depth)")
    parser.add_argument(
        "--data-root", default=None, metavar="DIR", help="images the naming tab's galleries are computed on"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=24,
        help="images scanned for the naming tab's galleries: a seeded sample of those found (as scripts/gallery.py's)",
    )
    parser.add_renamed_option("--gallery-images", "--sample", "the name scripts/gallery.py gives it")
    parser.add_argument("--per-cluster", type=int, default=6, help="pictures per cluster in the naming tab")
    parser.add_argument(
        "--assignment",
        default=None,
        metavar="EVAL_JSON",
        help="eval.py --output-json file naming the clusters of checkpoints that have no names file",
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="the working size (short side) photos are segmented at when the page leaves it empty "
        "(default: the checkpoint's own; none: each photo's own size)",
    )
    parser.add_argument("--max-models", type=int, default=2, help="loaded models kept (least recently used dropped)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocast is faster on GPUs")
    return parser


def check_args(args):
    check_at_least(args.port, "--port", 0)
    if args.port > 65535:
        raise OptionError(f"--port must lie in 0..65535, got {args.port}")
    check_at_least(args.max_models, "--max-models", 1)
    check_at_least(args.sample, "--sample", 1)
    check_at_least(args.per_cluster, "--per-cluster", 1)
    check_at_least(args.short_side, "--short-side", 1)
    for option, files in (
        ("--checkpoint", args.checkpoint or []),
        ("--assignment", [args.assignment] * bool(args.assignment)),
    ):
        for file in files:
            if not Path(file).is_file():
                raise OptionError(f"{option} {file}: no such file")
    for option, folder in (("--examples", args.examples), ("--data-root", args.data_root)):
        if folder is not None and not Path(folder).is_dir():
            raise OptionError(f"{option} {folder}: no such folder")


def pydensecrf_missing():
    """Why the CRF box is greyed out, or None when pydensecrf imports."""
    try:
        require("pydensecrf.densecrf", PYDENSECRF_REQUIREMENT, "the CRF")
    except ReportedError as err:
        return str(err)
    return None


def demo_scenes(folder, count=DEMO_SCENES):
    """The demo's synthetic scenes (data/synthetic.py), written as PNGs to offer as examples."""
    paths = []
    rng = np.random.default_rng(0)
    for index in range(count):
        scene, _ = make_scene(240, 320, rng)
        path = Path(folder) / f"scene_{index}.png"
        Image.fromarray(scene).save(path)
        paths.append(path)
    return paths


class Page:
    """The state the page's actions share: the checkpoints, the model cache, recent results."""

    def __init__(self, args, device, logger, work_dir):
        self.args = args
        self.device = device
        self.logger = logger
        self.work_dir = Path(work_dir)
        self.entries = find_checkpoints(
            PROJECT_ROOT,
            args.checkpoint or (),
            os.environ.get("CHECKPOINT_DIR") or None,
            args.search,
        )
        assignment_loader = None
        if args.assignment:

            def assignment_loader(num_clusters, num_classes):
                return predict_cli.load_assignment(args.assignment, num_clusters, num_classes)

        self.cache = ModelCache(self.entries, device, args.max_models, assignment_loader, logger)
        self.crf_missing = pydensecrf_missing()
        scenes = demo_scenes(self._new_folder("examples"))
        extra = scan_images(args.examples, check_stems=False).images if args.examples else []
        self.examples = [*scenes, *(Path(args.examples) / path for path in extra)]
        if args.data_root:
            paths, labels = find_gallery_images(args.data_root)
        else:
            paths, labels = self.examples, [path.name for path in self.examples]
        chosen = seeded_sample(len(paths), args.sample)
        self.gallery_images = ([paths[index] for index in chosen], [labels[index] for index in chosen])
        self.results = collections.OrderedDict()
        self.galleries = {}
        self.lock = threading.Lock()

    def _new_folder(self, name):
        return Path(tempfile.mkdtemp(prefix=f"{name}_", dir=self.work_dir))

    def default_key(self):
        return self.entries[0].key if self.entries else None

    def choices(self):
        """(label, key) of every listed checkpoint; loaded ones name their dataset, backbone and K."""
        loaded = dict(self.cache.loaded)
        return [(entry.label(loaded.get(entry.key)), entry.key) for entry in self.entries]

    def loaded_text(self):
        shown = {entry.key: entry.shown for entry in self.entries}
        keys = self.cache.loaded_keys()
        return "Loaded models: " + (", ".join(f"`{shown.get(key, key)}`" for key in keys) if keys else "none")

    def model(self, key):
        if not key:
            raise PageError(NO_CHECKPOINT if not self.entries else "choose a checkpoint")
        return self.cache.get(key)

    def run_segment(self, image, key, flip, crf, short_side, progress):
        if not image:
            raise PageError("upload an image first (or pick an example)")
        if crf and self.crf_missing:
            raise PageError(self.crf_missing)
        check_at_least(int(short_side) if short_side else None, "short side", 1)
        progress(0.05, desc=f"loading {key}")
        loaded = self.model(key)
        progress(0.2, desc="segmenting (a 12 MP photo takes tens of seconds on a CPU)")
        result = segment_photo(
            loaded,
            image,
            self.device,
            flip=bool(flip),
            crf=bool(crf),
            short_side=int(short_side) if short_side else self.args.short_side,
            precision=self.args.precision,
        )
        progress(0.9, desc="writing the clusters file")
        clusters_file = self._new_folder("result") / f"{Path(result.name).stem}_clusters.png"
        save_clusters_png(result.clusters, loaded.names.merged_colours(), clusters_file)
        return result, str(clusters_file)

    def keep(self, session, result):
        """The session's latest result, for the opacity slider and the legend (KEPT_RESULTS sessions)."""
        with self.lock:
            self.results[session] = result
            self.results.move_to_end(session)
            while len(self.results) > KEPT_RESULTS:
                self.results.popitem(last=False)

    def result(self, session):
        with self.lock:
            result = self.results.get(session)
        if result is None:
            raise PageError("that result is no longer kept: segment the image again")
        return result

    def cluster_gallery(self, key, progress):
        """engine/gallery.py's scan of the examples (or --data-root) by a checkpoint, once per load."""
        loaded = self.model(key)
        cached = self.galleries.get(key)
        if cached is not None and cached[0] is loaded:
            return cached[1]
        paths, labels = self.gallery_images
        gallery = scan_clusters(
            loaded.model,
            paths,
            self.device,
            labels=labels,
            per_cluster=self.args.per_cluster,
            short_side=self.args.short_side or loaded.default_short_side,
            precision=self.args.precision,
            progress=lambda pairs: progress.tqdm(pairs, desc="scanning the images"),
            logger=self.logger,
        )
        self.galleries[key] = (loaded, gallery)
        return gallery

    def cluster_pictures(self, key, cluster):
        """[(the cluster highlighted beside the whole map, caption)] of one cluster's top images."""
        loaded, gallery = self.galleries[key]
        colours = loaded.names.merged_colours()
        pictures = []
        for entry in gallery.top[cluster]:
            highlighted, whole = entry_panels(entry, cluster, colours)
            pictures.append((side_by_side(highlighted, whole), f"{entry.label}: {entry.shares[cluster]:.1%}"))
        return pictures

    def save_names(self, key, rows, overwrite):
        """Write the table's names beside the checkpoint (with its sha256); an existing file only
        with ``overwrite``. The names are checked by the format's own reader before anything is
        replaced."""
        loaded = self.model(key)
        path = names_file_beside(loaded.entry.path)
        names, colours = {}, {}
        for row in rows:
            if not any(str(value).strip() for value in row):
                continue
            try:
                cluster = int(float(row[0]))
            except (TypeError, ValueError):
                raise PageError(f"names table: id {row[0]!r} is not a cluster id") from None
            names[cluster], colours[cluster] = str(row[1]).strip(), str(row[2]).strip()
        shares = self.galleries[key][1].shares().tolist() if key in self.galleries else None
        draft = self._new_folder("names") / path.name
        text = draft_yaml(loaded.entry.path.name, file_sha256(loaded.entry.path), names, colours, shares)
        draft.write_text(text, encoding="utf-8")
        try:
            checked = read_names(draft, loaded.num_clusters)
        except ReportedError as err:
            raise PageError(str(err).replace(str(draft), "names table")) from err
        if path.exists() and not overwrite:
            raise PageError(
                f"{names_file_beside(key)} exists: tick 'replace the existing names file' and save again to replace it"
            )
        write_names(path, checked)
        loaded.names = checked
        return f"saved {len(checked.names)} names to {names_file_beside(key)} (sha256 of {loaded.entry.path.name})"


def draft_yaml(checkpoint_name, sha256, names, colours, shares):
    """The names format of the table's rows as the user wrote them (read_names then checks every entry)."""
    lines = [yaml.safe_dump({"checkpoint": checkpoint_name, "sha256": sha256}, sort_keys=False).strip(), "clusters:"]
    for cluster in sorted(names):
        entry = {"id": cluster, "name": names[cluster], "colour": colours[cluster]}
        if shares is not None and 0 <= cluster < len(shares):
            entry["share"] = round(float(shares[cluster]), 6)
        lines.append("  - " + yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10**6).strip())
    return "\n".join(lines) + "\n"


def side_by_side(left, right, gap=4):
    """Two pictures of one height in a row, ``gap`` white pixels apart."""
    row = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    row.paste(left, (0, 0))
    row.paste(right, (left.width + gap, 0))
    return row


def shares_table(result):
    return [[name, colour_text(colour), round(share, 4)] for name, colour, share in result.shares()]


def legend_html(result):
    rows = "".join(
        f'<span style="display:inline-block;margin:2px 8px 2px 0"><span style="display:inline-block;width:14px;'
        f'height:14px;background:{colour_text(colour)};border:1px solid #666;vertical-align:middle"></span> '
        f"{name} ({share:.1%})</span>"
        for name, colour, share in result.shares()
    )
    return f"<div>{rows}</div>"


def names_rows(loaded):
    return [
        [cluster, name, colour_text(colour)]
        for cluster, (name, colour) in enumerate(zip(loaded.names.names, loaded.names.colours))
    ]


def build_page(page):
    """The Gradio Blocks of the page (docs/app.md lists its element ids and its API)."""
    import gradio as gr

    def reported(action):
        """Run a page action: a problem becomes one message in the page and one terminal line."""

        @functools.wraps(action)
        def run(*inputs, **kwargs):
            try:
                return action(*inputs, **kwargs)
            except ReportedError as err:
                message = str(err).splitlines()[0] if str(err) else type(err).__name__
                print(f"error: {message}", file=sys.stderr, flush=True)
                raise gr.Error(message, print_exception=False) from None
            except gr.Error:
                raise
            except Exception as err:  # a bug: its traceback on the terminal, one line in the page
                traceback.print_exc()
                message = f"unexpected {type(err).__name__}: {err} -- a bug of iddc; the terminal has the traceback"
                print(f"error: {message}", file=sys.stderr, flush=True)
                raise gr.Error(message, print_exception=False) from None

        return run

    default_key = page.default_key()

    def segment(
        image,
        checkpoint=default_key,
        flip=True,
        crf=False,
        short_side=0,
        request: gr.Request = None,
        progress=gr.Progress(),
    ):
        """Segment one image: (overlay, colour map, indexed clusters PNG file, shares table)."""
        result, clusters_file = page.run_segment(image, checkpoint, flip, crf, short_side, progress)
        page.keep(request.session_hash, result)
        return (
            result.overlay(0.5, PREVIEW_MAX_SIDE),
            result.colour(PREVIEW_MAX_SIDE),
            clusters_file,
            shares_table(result),
        )

    def compare(
        image,
        checkpoint_a=default_key,
        checkpoint_b=default_key,
        flip=True,
        crf=False,
        short_side=0,
        progress=gr.Progress(),
    ):
        """The same image through two checkpoints: (overlay of the first, overlay of the second)."""
        first, _ = page.run_segment(image, checkpoint_a, flip, crf, short_side, progress)
        second, _ = page.run_segment(image, checkpoint_b, flip, crf, short_side, progress)
        return first.overlay(0.5, PREVIEW_MAX_SIDE), second.overlay(0.5, PREVIEW_MAX_SIDE)

    def segment_many(images, checkpoint=default_key, flip=True, crf=False, short_side=0, progress=gr.Progress()):
        """Segment several images: (their overlays with captions, their indexed clusters PNG files)."""
        if not images:
            raise PageError("upload one or several images first")
        overlays, clusters_files = [], []
        for image in progress.tqdm(images, desc="segmenting the images"):
            result, clusters_file = page.run_segment(image, checkpoint, flip, crf, short_side, lambda *a, **k: None)
            overlays.append((result.overlay(0.5, PREVIEW_MAX_SIDE), result.name))
            clusters_files.append(clusters_file)
        return overlays, clusters_files

    def save_names(checkpoint, names_table, overwrite=False):
        """Write the names table beside the checkpoint as <stem>.clusters.yaml (overwrite: replace one)."""
        rows = names_table.values.tolist() if hasattr(names_table, "values") else list(names_table.get("data", []))
        return page.save_names(checkpoint, rows, bool(overwrite))

    def loaded_models() -> str:
        """Which checkpoints are loaded now (the least recently used is dropped beyond --max-models)."""
        return page.loaded_text()

    def after_segment(request: gr.Request):
        result = page.result(request.session_hash)
        entries = [ALL_CLUSTERS, *(name for name, _, _ in result.shares())]
        return (
            gr.update(choices=entries, value=ALL_CLUSTERS),
            legend_html(result),
            page.loaded_text(),
            gr.update(choices=page.choices()),
        )

    def redraw(opacity, chosen, request: gr.Request):
        result = page.result(request.session_hash)
        only = None if chosen in (None, ALL_CLUSTERS) else chosen
        return result.overlay(float(opacity), PREVIEW_MAX_SIDE, only), result.colour(PREVIEW_MAX_SIDE, only)

    def show_names(checkpoint, progress=gr.Progress()):
        gallery = page.cluster_gallery(checkpoint, progress)
        loaded = page.model(checkpoint)
        shares = gallery.shares()
        choices = [
            (f"{cluster}: {name} ({shares[cluster]:.1%})", cluster) for cluster, name in enumerate(loaded.names.names)
        ]
        return (
            names_rows(loaded),
            gr.update(choices=choices, value=0),
            page.cluster_pictures(checkpoint, 0),
            page.loaded_text(),
        )

    def show_cluster(checkpoint, cluster):
        if checkpoint not in page.galleries:
            return []
        return page.cluster_pictures(checkpoint, int(cluster or 0))

    crf_info = page.crf_missing or "STEGO's dense CRF (docs/evaluation.md); slower"
    on_gpu = page.device.type == "cuda"
    intro = (
        f"Segment photos with an IDDC checkpoint, as `predict.py` does. Device: {page.device}"
        + (f", precision {page.args.precision}" if on_gpu else "")
        + f"; at most {page.args.max_models} models stay loaded."
    )
    with gr.Blocks(title="iddc", analytics_enabled=False) as blocks:
        gr.Markdown("## iddc: unsupervised semantic segmentation\n" + intro)
        if not page.entries:
            gr.Markdown(NO_CHECKPOINT, elem_id="no-checkpoint")
        checkpoint = gr.Dropdown(
            choices=page.choices(), value=default_key, label="checkpoint", elem_id="checkpoint", interactive=True
        )
        loaded_md = gr.Markdown(page.loaded_text(), elem_id="loaded-models")
        with gr.Tabs():
            with gr.Tab("Segment", id="segment-tab"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="image", type="filepath", elem_id="upload")
                        gr.Examples(examples=[[str(path)] for path in page.examples], inputs=[upload], label="examples")
                        flip = gr.Checkbox(value=True, label="flip averaging", elem_id="flip")
                        crf = gr.Checkbox(
                            value=False, label="CRF", info=crf_info, interactive=page.crf_missing is None, elem_id="crf"
                        )
                        short_side = gr.Number(
                            value=0, precision=0, label="short side (0: the checkpoint's default)", elem_id="short-side"
                        )
                        run_button = gr.Button("Segment", variant="primary", elem_id="segment")
                    with gr.Column(scale=2):
                        with gr.Row():
                            overlay = gr.Image(label="overlay", type="pil", format="png", elem_id="overlay")
                            colour = gr.Image(label="colour map", type="pil", format="png", elem_id="colour")
                        opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="opacity", elem_id="opacity")
                        legend = gr.Radio(
                            choices=[ALL_CLUSTERS], value=ALL_CLUSTERS, label="legend: show one alone", elem_id="legend"
                        )
                        swatches = gr.HTML(elem_id="legend-colours")
                        clusters_file = gr.File(
                            label="indexed clusters PNG (pixel value = cluster id)", elem_id="clusters-file"
                        )
                        shares = gr.Dataframe(
                            headers=["name", "colour", "share"], label="shares of the image", elem_id="shares"
                        )
            with gr.Tab("Several images", id="several-tab"):
                with gr.Row():
                    uploads = gr.File(label="images", file_count="multiple", type="filepath", elem_id="uploads")
                    many_button = gr.Button("Segment them all", variant="primary", elem_id="segment-many")
                many_overlays = gr.Gallery(label="overlays", columns=3, height=360, elem_id="overlays")
                many_files = gr.File(label="indexed clusters PNGs", file_count="multiple", elem_id="clusters-files")
            with gr.Tab("Compare", id="compare-tab", elem_id="compare"):
                with gr.Row():
                    compare_upload = gr.File(label="image", type="filepath", elem_id="compare-upload")
                    checkpoint_b = gr.Dropdown(
                        choices=page.choices(),
                        value=page.entries[-1].key if page.entries else None,
                        label="second checkpoint",
                        elem_id="checkpoint-b",
                    )
                compare_button = gr.Button("Compare", variant="primary", elem_id="compare-button")
                with gr.Row():
                    overlay_a = gr.Image(label="first checkpoint", type="pil", format="png", elem_id="overlay-a")
                    overlay_b = gr.Image(label="second checkpoint", type="pil", format="png", elem_id="overlay-b")
            with gr.Tab("Name the clusters", id="names-tab"):
                gr.Markdown(
                    "Each cluster's gallery: the scanned images where it covers the most (the cluster in colour, the "
                    "rest dimmed) beside the whole map. Name the clusters (one name for several merges them) and save: "
                    "`predict.py` then uses the names without options."
                )
                show_button = gr.Button("Show the clusters", elem_id="show-clusters")
                cluster_pick = gr.Dropdown(choices=[], label="cluster", elem_id="cluster-pick")
                cluster_gallery = gr.Gallery(
                    label="where it covers the most", columns=2, height=320, elem_id="cluster-gallery"
                )
                names_table = gr.Dataframe(
                    headers=["id", "name", "colour"],
                    datatype=["number", "str", "str"],
                    interactive=True,
                    elem_id="names-table",
                )
                overwrite = gr.Checkbox(value=False, label="replace the existing names file", elem_id="overwrite")
                save_button = gr.Button("Save names", elem_id="save-names")
                save_status = gr.Markdown(elem_id="save-status")

        segment_inputs = [upload, checkpoint, flip, crf, short_side]
        done = run_button.click(
            reported(segment),
            segment_inputs,
            [overlay, colour, clusters_file, shares],
            api_name="segment",
            concurrency_id=MODEL_QUEUE,
        )
        done.success(
            reported(after_segment),
            None,
            [legend, swatches, loaded_md, checkpoint],
            api_visibility="private",
        )
        for control in (opacity, legend):
            control.change(
                reported(redraw),
                [opacity, legend],
                [overlay, colour],
                api_visibility="private",
                show_progress="hidden",
            )
        many_button.click(
            reported(segment_many),
            [uploads, checkpoint, flip, crf, short_side],
            [many_overlays, many_files],
            api_name="segment_many",
            concurrency_id=MODEL_QUEUE,
        ).then(loaded_models, None, loaded_md, api_name="show_loaded_after_many", api_visibility="private")
        compared = compare_button.click(
            reported(compare),
            [compare_upload, checkpoint, checkpoint_b, flip, crf, short_side],
            [overlay_a, overlay_b],
            api_name="compare",
            concurrency_id=MODEL_QUEUE,
        )
        compared.then(loaded_models, None, loaded_md, api_name="show_loaded_models", api_visibility="private")
        save_button.click(
            reported(save_names),
            [checkpoint, names_table, overwrite],
            save_status,
            api_name="save_names",
            concurrency_id=MODEL_QUEUE,
        )
        show_button.click(
            reported(show_names),
            [checkpoint],
            [names_table, cluster_pick, cluster_gallery, loaded_md],
            api_visibility="private",
            concurrency_id=MODEL_QUEUE,
        )
        cluster_pick.change(
            reported(show_cluster), [checkpoint, cluster_pick], cluster_gallery, api_visibility="private"
        )
        gr.api(loaded_models, api_name="loaded_models")
    blocks.queue(default_concurrency_limit=1)
    return blocks


def launch(blocks, args, work_dir, block=True):
    """Serve the page on --host:--port: no share link, no analytics, fonts of this machine only, and
    files served only from the page's own folders; ``block=False`` returns once it serves."""
    import gradio as gr

    allowed = [work_dir, *([args.examples] if args.examples else []), *([args.data_root] if args.data_root else [])]
    blocks.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        quiet=True,
        prevent_thread_lock=not block,
        theme=gr.themes.Default(font=LOCAL_FONTS, font_mono=LOCAL_MONO_FONTS),
        allowed_paths=[str(Path(path).resolve()) for path in allowed],
        footer_links=[],
    )


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    check_args(args)
    device = torch.device(resolve_device(args.device))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    require("gradio", GRADIO_REQUIREMENT, "app.py (the page)")
    logger = setup_logger()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="iddc_app_") as work_dir:
        page = Page(args, device, logger, work_dir)
        listed = ", ".join(entry.key for entry in page.entries) or "none (the page says how to get one)"
        logger.info("checkpoints offered: %s", listed)
        blocks = build_page(page)
        logger.info("serving on http://%s:%d (Ctrl-C stops it)", args.host, args.port)
        launch(blocks, args, work_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
