"""app.py, the page: its API through gradio_client and the page itself in a headless Chromium, on
one server the module starts on 127.0.0.1 (tiny random checkpoints, small images).

The maps must be predict.py's: the clusters file is compared with predict.py's pixel for pixel,
and with engine/segment.py's function for the options predict.py in this branch lacks.
"""

import json
import logging
import os
import shutil
import signal
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import urlopen

import numpy as np
import pytest
import torch
import yaml
from cli_runner import fork_script
from helpers import free_port, save_released, small_model
from PIL import Image

import predict as predict_cli
from data.photos import read_photo
from data.synthetic import make_scene
from engine.names import file_sha256, resolve_names
from engine.segment import segment
from engine.serving import PageError, find_checkpoints
from modules.checkpoint import load_iddc_model

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")  # imported here once, so that the forked server does not import it again

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL_BROWSER = "apt-get install -y chromium chromium-driver (Debian's), and pip install selenium"
SERVER_START_S = 120
SCREENSHOT_ENV = "IDDC_APP_SCREENSHOT"  # also save the browser test's screenshot there (docs/app_screenshot.png)


def read_ids(path):
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def write_scene(path, width, height, seed):
    scene, _ = make_scene(height, width, np.random.default_rng(seed))
    Image.fromarray(scene).save(path, quality=92)
    return path


def bomb_png(path, side):
    """A PNG whose header claims side x side pixels (Pillow's decompression-bomb limit is 89.5 M
    pixels: it warns above it, and refuses above twice it)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.mktemp("app")
    models = base / "models"
    models.mkdir()
    checkpoints = {
        "a": save_released(small_model(seed=0), models / "a.pth"),
        "b": save_released(small_model(seed=1, num_classes=5), models / "b.pth"),
        "c": save_released(small_model(seed=2, num_classes=4), models / "c.pth"),
        "broken": models / "broken.pth",
    }
    checkpoints["broken"].write_bytes(b"\x80\x02 half a pickle")
    photos = base / "photos"
    photos.mkdir()
    images = {
        "scene": write_scene(photos / "scene.jpg", 320, 240, 1),
        "tall": write_scene(photos / "tall.png", 200, 260, 2),
        "notes": photos / "notes.txt",
        "undecodable": photos / "broken.jpg",
        "bomb": bomb_png(photos / "bomb.png", 30000),
        "bomb_warned": bomb_png(photos / "bomb_warned.png", 10000),
    }
    images["notes"].write_text("not an image\n")
    images["undecodable"].write_bytes(b"\xff\xd8\xff not a jpeg")
    return {"base": base, "checkpoints": checkpoints, "images": images}


@pytest.fixture(scope="module")
def server(files):
    """app.py serving the four checkpoints (at most 2 loaded), forked from this process."""
    port = free_port()
    out, err = files["base"] / "server.out", files["base"] / "server.err"
    argv = ["--checkpoint", *map(str, files["checkpoints"].values()), "--port", port, "--device", "cpu"]
    # Started in the test's folder, as a user starts it beside their files: the page names the
    # checkpoints from there (models/a.pth), while the API takes them by their listed path.
    pid = fork_script("app.py", argv, out, err, setup=os.setsid, cwd=files["base"])
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urlopen(url, timeout=2):
                break
        except OSError:
            ended, _ = os.waitpid(pid, os.WNOHANG)
            assert not ended and time.monotonic() < deadline, out.read_text() + err.read_text()
            time.sleep(0.2)
    try:
        yield {"url": url, "stderr": err, "client": gradio_client.Client(url, verbose=False)}
    finally:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def key(files, name):
    return str(files["checkpoints"][name])


def predict_clusters(files, tmp_path, image, *flags):
    out = tmp_path / "predicted"
    code = predict_cli.main(
        ["--checkpoint", key(files, "a"), "--input", str(image), "--output-dir", str(out), "--device", "cpu", *flags]
    )
    assert code == 0
    return read_ids(out / f"{image.stem}_clusters.png")


def segment_api(server, image, *options):
    return server["client"].predict(gradio_client.handle_file(str(image)), *options, api_name="/segment")


def test_segment_is_predicts_clusters_png(server, files, tmp_path):
    image = files["images"]["scene"]
    overlay, colour, clusters_file, shares = segment_api(server, image)
    assert Path(clusters_file).name == "scene_clusters.png"
    ids = read_ids(clusters_file)
    assert np.array_equal(ids, predict_clusters(files, tmp_path, image))
    with Image.open(clusters_file) as page_png, Image.open(tmp_path / "predicted" / "scene_clusters.png") as predicted:
        assert page_png.getpalette() == predicted.getpalette()  # the same colours too
    with Image.open(overlay) as picture, Image.open(colour) as coloured:
        assert picture.size == coloured.size == (320, 240)
    assert shares["headers"] == ["name", "colour", "share"]
    assert sum(row[2] for row in shares["data"]) == pytest.approx(1, abs=1e-3)
    counts = np.bincount(ids.reshape(-1), minlength=27)
    largest = int(counts.argmax())
    assert shares["data"][0][0] == f"cluster {largest}"
    assert shares["data"][0][2] == pytest.approx(counts[largest] / ids.size, abs=1e-4)


def test_segment_options_are_predicts(server, files, tmp_path):
    """No flip with the CRF is predict.py --no-flip --crf; a short side is engine/segment.py's
    function on the photo reader's working size, with the map at the original size."""
    image = files["images"]["tall"]
    _, _, crf_file, _ = segment_api(server, image, key(files, "a"), False, True, 0)
    assert np.array_equal(
        read_ids(crf_file), predict_clusters(files, tmp_path, image, "--no-flip", "--crf", "--crf-workers", "0")
    )
    _, _, short_file, _ = segment_api(server, image, key(files, "a"), True, False, 150)
    model, _ = load_iddc_model(files["checkpoints"]["a"])
    working, original = read_photo(image, 150)
    assert working.size == (150, 195) and original == (200, 260)
    assert np.array_equal(read_ids(short_file), segment(model.eval(), working, "cpu", size=original))


def test_several_images_at_once(server, files):
    scene, tall = files["images"]["scene"], files["images"]["tall"]
    uploads = [gradio_client.handle_file(str(path)) for path in (scene, tall)]
    overlays, clusters_files = server["client"].predict(uploads, key(files, "a"), api_name="/segment_many")
    assert [item["caption"] for item in overlays] == ["scene.jpg", "tall.png"]
    assert [Path(path).name for path in clusters_files] == ["scene_clusters.png", "tall_clusters.png"]
    assert np.array_equal(read_ids(clusters_files[0]), read_ids(segment_api(server, scene)[2]))


def test_compare_two_checkpoints(server, files):
    image = gradio_client.handle_file(str(files["images"]["scene"]))
    first, second = server["client"].predict(image, key(files, "a"), key(files, "b"), api_name="/compare")
    with Image.open(first) as left, Image.open(second) as right:
        assert left.size == right.size == (320, 240)
        assert not np.array_equal(np.array(left), np.array(right))


def test_names_saved_on_the_page_are_read_by_predict(server, files):
    client, checkpoint = server["client"], files["checkpoints"]["b"]
    rows = [
        [0, "sky", "#87ceeb"],
        [1, "ground", "#8b4513"],
        [2, "ground", "#8b4513"],
        [3, "tree", "#228b22"],
        [4, "sea", "#0000ff"],
    ]
    table = {"headers": ["id", "name", "colour"], "data": rows}
    message = client.predict(str(checkpoint), table, api_name="/save_names")
    assert "b.clusters.yaml" in message
    names = resolve_names(checkpoint, 5)
    assert names.names == ["sky", "ground", "ground", "tree", "sea"] and names.sha256 == file_sha256(checkpoint)
    assert [name for name, _, _ in names.classes()] == ["sky", "ground", "tree", "sea"]
    saved = yaml.safe_load(checkpoint.with_name("b.clusters.yaml").read_text())
    assert saved["checkpoint"] == "b.pth" and saved["clusters"][0] == {"id": 0, "name": "sky", "colour": "#87ceeb"}
    rows[0][1] = "air"
    with pytest.raises(gradio_client.exceptions.AppError, match="exists: tick"):
        client.predict(str(checkpoint), table, api_name="/save_names")
    assert resolve_names(checkpoint, 5).names[0] == "sky"
    rows[4][2] = "blue"
    with pytest.raises(gradio_client.exceptions.AppError, match=r"id 4: colour 'blue': expected #rrggbb"):
        client.predict(str(checkpoint), table, False, api_name="/save_names")
    rows[4][2] = "#0000ff"
    client.predict(str(checkpoint), table, True, api_name="/save_names")
    assert resolve_names(checkpoint, 5).names[0] == "air"
    # The page's maps use them at once: the legend lists names, merged.
    _, _, _, shares = segment_api(server, files["images"]["scene"], str(checkpoint))
    assert {row[0] for row in shares["data"]} <= {"air", "ground", "tree", "sea"}


def test_each_problem_is_one_message_and_one_terminal_line(server, files):
    images, stderr = files["images"], server["stderr"]
    before = stderr.read_text().count("\nerror: ") + stderr.read_text().startswith("error: ")
    cases = [
        ((images["notes"],), "notes.txt: not an image"),
        ((images["undecodable"],), "broken.jpg: cannot read the image"),
        ((images["bomb"],), "bomb.png: Image size (900000000 pixels) exceeds limit"),
        ((images["bomb_warned"],), "bomb_warned.png: 10000x10000 is 100000000 pixels, above Pillow's"),
        ((images["scene"], key(files, "broken")), "broken.pth: cannot read it as a torch checkpoint"),
    ]
    for arguments, expected in cases:
        with pytest.raises(gradio_client.exceptions.AppError) as raised:
            segment_api(server, *arguments)
        assert expected in str(raised.value) and "\n" not in str(raised.value)
    terminal = stderr.read_text()
    errors = [line for line in terminal.splitlines() if line.startswith("error: ")]
    assert len(errors) - before == len(cases) and "Traceback" not in terminal
    # Only a listed checkpoint is ever loaded: Gradio's list of choices refuses any other path.
    with pytest.raises(gradio_client.exceptions.AppError, match="elsewhere.pth is not in the list of choices"):
        segment_api(server, images["scene"], str(files["base"] / "elsewhere.pth"))
    assert segment_api(server, images["scene"])[2].endswith("scene_clusters.png")  # still serving


def test_two_requests_at_once_and_the_model_cache(server, files):
    client, image = server["client"], gradio_client.handle_file(str(files["images"]["scene"]))
    with ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(client.predict, image, key(files, name), api_name="/segment") for name in ("a", "b")]
        first, second = (job.result(timeout=60) for job in jobs)
    assert read_ids(first[2]).max() < 27 and read_ids(second[2]).max() < 5
    for name in ("a", "b", "c"):  # a third model: the least recently used (a) goes
        segment_api(server, files["images"]["scene"], key(files, name))
    loaded = client.predict(api_name="/loaded_models")
    assert "`models/b.pth`" in loaded and "`models/c.pth`" in loaded and "models/a.pth" not in loaded


# ---------------------------------------------------------------- the page in a real browser


def chromium_driver(download_dir, profile_dir):
    """Debian's headless Chromium through Debian's chromedriver at its explicit path (nothing is
    downloaded); in CI (CI=true) their absence fails the test, elsewhere it skips it."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"the browser test needs {', '.join(missing)}: {INSTALL_BROWSER}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        f"--user-data-dir={profile_dir}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def requested_hosts(driver):
    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            url = urlsplit(message["params"]["request"]["url"])
            if url.scheme in ("http", "https", "ws", "wss"):
                hosts.add(url.hostname)
    return hosts


def wait_for(driver, condition, seconds=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(lambda _: condition())


def test_the_page_in_a_browser(server, files, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium_driver(downloads, tmp_path / "profile")
    from selenium.webdriver.common.by import By

    hosts = set()
    try:
        driver.get(server["url"])
        wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        image = files["images"]["scene"]
        driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(image))
        wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#upload a[download]"))
        driver.find_element(By.CSS_SELECTOR, "#segment").click()
        link = wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#clusters-file a[download]"))[0]
        link.click()
        downloaded = downloads / "scene_clusters.png"
        wait_for(driver, downloaded.is_file, 20)
        assert np.array_equal(read_ids(downloaded), predict_clusters(files, tmp_path, image))
        # The legend: one entry shows that cluster alone in the colour map (everything else white).
        entries = wait_for(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#legend label")[1:])
        colour_before = driver.find_element(By.CSS_SELECTOR, "#colour img").get_attribute("src")
        entries[0].click()
        wait_for(
            driver, lambda: driver.find_element(By.CSS_SELECTOR, "#colour img").get_attribute("src") != colour_before
        )
        driver.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / "app_screenshot.png"
        driver.save_screenshot(str(shot))
        if os.environ.get(SCREENSHOT_ENV):
            shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])
        # Name the clusters: the table of the chosen checkpoint, saved beside it.
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Name the clusters')]").click()
        driver.find_element(By.CSS_SELECTOR, "#show-clusters").click()
        wait_for(driver, lambda: "cluster 0" in driver.find_element(By.ID, "names-table").text)
        driver.find_element(By.CSS_SELECTOR, "#save-names").click()
        names_file = files["checkpoints"]["a"].with_name("a.clusters.yaml")
        wait_for(driver, names_file.is_file, 20)
        assert resolve_names(files["checkpoints"]["a"], 27).names[26] == "cluster 26"
        hosts = requested_hosts(driver)
    finally:
        driver.quit()
    assert hosts == {"127.0.0.1"}, f"the page requested other hosts: {sorted(hosts - {'127.0.0.1'})}"


# ---------------------------------------------------------------- without a server


def test_listing_reads_names_only_and_no_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    import app as app_cli

    for relative in ("checkpoints/x.pth", "outputs/demo/run/last_model.pth", "runs/a/b/best_model.pth"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"not even a pickle")  # listed, never read
    (tmp_path / "outputs/demo/run/resume.pth").write_bytes(b"")
    listed = find_checkpoints(tmp_path)
    assert [entry.key for entry in listed] == [
        "checkpoints/x.pth",
        "outputs/demo/run/last_model.pth",
        "runs/a/b/best_model.pth",
    ]
    assert listed[0].size == len(b"not even a pickle")
    assert [entry.key for entry in find_checkpoints(tmp_path, search_dirs=[tmp_path / "runs"])][1:] == [
        "runs/a/b/best_model.pth"
    ]

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("CHECKPOINT_DIR", str(empty))
    for module in ("pydensecrf", "pydensecrf.densecrf"):  # a machine without pydensecrf
        monkeypatch.setitem(sys.modules, module, None)
    args = app_cli.build_parser().parse_args(["--search", str(empty), "--device", "cpu"])
    page = app_cli.Page(args, torch.device("cpu"), logging.getLogger("iddc"), tmp_path)
    assert page.entries == [] and "pip install pydensecrf2" in page.crf_missing
    config = app_cli.build_page(page).config
    texts = json.dumps(config["components"])
    assert "bash val_coco27.sh" in texts and "python demo.py" in texts
    crf = next(item for item in config["components"] if item["props"].get("elem_id") == "crf")
    assert crf["props"]["interactive"] is False and "pydensecrf" in crf["props"]["info"]
    photo = tmp_path / "x.png"
    Image.new("RGB", (64, 48)).save(photo)
    with pytest.raises(PageError, match="val_coco27.sh"):
        page.run_segment(str(photo), page.default_key(), True, False, 0, lambda *a, **k: None)
