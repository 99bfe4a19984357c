"""Optional packages, imported where a feature needs them, with the install command when missing.

pydensecrf (``--crf``), faiss (the k-means baseline), tensorboard (training's TensorBoard logs) and
gdown (Google Drive downloads) are in requirements.txt, but a user who installed only what a paper
run needs may lack one. Without this, the ImportError would end as "a bug of iddc".
"""

import importlib
import shlex

from utils.errors import MissingDependencyError


def require(module, pip_name, purpose):
    """Import and return ``module``; a one-line MissingDependencyError (exit 2) when it cannot be.

    ``pip_name`` is the requirement as requirements.txt writes it (e.g. ``pydensecrf2==1.1``), so
    that the message's command installs the tested version; ``purpose`` says what needs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        command = f"pip install {shlex.quote(pip_name)}"
        top = module.split(".")[0]
        if isinstance(err, ModuleNotFoundError) and (err.name or "").split(".")[0] == top:
            raise MissingDependencyError(
                f"{purpose} needs the Python package {top}, which is not installed; install it with: {command}"
            ) from err
        raise MissingDependencyError(
            f"{purpose} needs the Python package {top}, which is installed but cannot be imported ({err}); "
            f"reinstall it with: {command}"
        ) from err
