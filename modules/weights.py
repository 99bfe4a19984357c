"""Reading and writing weight files, for every format the project knows (modules/checkpoint.py
for IDDC's, modules/backbones.py for the backbones' release files): one-message errors that name
the file and the tensor, strict loading that lists every mismatch, atomic saving.
"""

from pathlib import Path

import torch

from utils.errors import EXIT_PROBLEMS, ReportedError
from utils.files import write_binary_atomic


class CheckpointError(ReportedError, ValueError):
    """A checkpoint file is missing, unreadable, holds non-finite weights or does not fit the model asked for."""


class WeightsDownloadError(CheckpointError):
    """The DINO weights could not be downloaded: a problem of the network, not of the input (exit 1)."""

    exit_code = EXIT_PROBLEMS


def load_file(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"{path}: cannot read it as a torch checkpoint ({type(err).__name__}: {_load_failure(err)}); "
            f"the file is damaged, truncated or not a checkpoint"
        ) from err


def _load_failure(err):
    """The cause in torch.load's message, on one line: for weights_only refusals the unpickler's own
    words, not the advice to load untrusted files with weights_only=False."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].split("Check the documentation", 1)[0]
    return " ".join(text.split()) or type(err).__name__


def strip_prefix(state_dict, prefix, source):
    stray = [key for key in state_dict if not key.startswith(prefix)]
    if stray:
        raise CheckpointError(f"{source}: backbone keys must start with {prefix!r}; found {stray[:5]}")
    return {key[len(prefix) :]: value for key, value in state_dict.items()}


def load_strict(module, state_dict, what, source):
    """load_state_dict(strict=True) with one message that lists every mismatch."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: file {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    if missing or unexpected or wrong_shape:
        lines = [f"{source}: the '{what}' weights do not fit the model"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise CheckpointError("\n".join(lines))
    check_finite_weights(state_dict, what, source)
    module.load_state_dict(state_dict, strict=True)


def check_finite_weights(state_dict, what, source):
    """A NaN or inf weight would make every prediction silently meaningless: name the tensor."""
    for key, value in state_dict.items():
        if torch.is_tensor(value) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = value[~finite]
                raise CheckpointError(
                    f"{source}: the '{what}' tensor {key} {tuple(value.shape)} holds {int(bad.isnan().sum())} NaN and "
                    f"{int(bad.isinf().sum())} infinite value(s); the file is damaged or came from a diverged run"
                )


def save_atomic(obj, path):
    """Write to a temporary file beside ``path`` and rename, so a crash never leaves half a file; a
    full disk is one line naming the file and the free space (utils/errors.py DiskFullError)."""
    write_binary_atomic(path, lambda file: torch.save(obj, file))
