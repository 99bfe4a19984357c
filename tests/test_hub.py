"""hubconf.py through torch.hub.load, with Google Drive played by the loopback HTTPS proxy."""

from pathlib import Path

import torch
from helpers import save_released, small_model
from http_server import Reply

from modules.checkpoint import load_iddc_model

ROOT = Path(__file__).resolve().parents[1]
VITS16_ID = "11a_S4t7KbyQJRzKLnhSIoSQ59ykPCxBl"


def test_hub_entry_point_downloads_once_and_loads(tmp_path, http_server, drive_proxy):
    served = save_released(small_model(seed=5), tmp_path / "served.pth")
    http_server.routes["uc"] = lambda request: Reply(
        served.read_bytes(), headers={"Content-Disposition": 'attachment; filename="x.pth"'}
    )
    folder = tmp_path / "hub_checkpoints"
    model = torch.hub.load(
        str(ROOT), "iddc_vits16_cocostuff27", source="local", checkpoint_dir=folder, proxy=drive_proxy.url, quiet=True
    )
    assert (folder / "cocostuff27_vits16.pth").read_bytes() == served.read_bytes()
    assert http_server.requests_for("uc")[0].query == {"id": VITS16_ID}
    assert not model.training and model.patch_size == 16 and model.num_classes == 27
    reference, _ = load_iddc_model(served)
    images = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(model(images)[2], reference.eval()(images)[2])
    requests_so_far = len(http_server.requests)
    torch.hub.load(
        str(ROOT), "iddc_vits16_cocostuff27", source="local", checkpoint_dir=folder, proxy=drive_proxy.url, quiet=True
    )
    assert len(http_server.requests) == requests_so_far  # already there: nothing downloaded
