"""The benchmarks by ``--dataset`` name. Adding one: write data/NAME.py with a DatasetSpec subclass
(see data/spec.py) and add its instance here; then a training config in configs/
(docs/datasets.md, 'Adding a dataset')."""

from data.cityscapes import CITYSCAPES27
from data.cocostuff import COCOSTUFF27
from data.cocostuff171 import COCOSTUFF171
from data.folder import NAME as FOLDER
from data.folder import FolderSpec
from data.potsdam import POTSDAM3
from data.spec import DataError, DatasetSpec

DATASETS = {spec.name: spec for spec in (COCOSTUFF27, COCOSTUFF171, CITYSCAPES27, POTSDAM3)}
DATASET_NAMES = tuple(DATASETS)  # the benchmarks
ALL_DATASET_NAMES = (*DATASET_NAMES, FOLDER)  # what train.py, eval.py and prepare_data.py take
DEFAULT_DATASET = COCOSTUFF27.name


def get_dataset(dataset, data_root=None):
    """The spec of a dataset name (a spec is returned as it is). The benchmarks' specs are fixed;
    ``folder``'s is built from ``data_root`` (data/folder.py), a new one each call: the entry
    points build it once and hand it on, so that its scan is done once."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    if dataset == FOLDER:
        if data_root is None:
            raise DataError("--dataset folder needs --data-root, the folder of images")
        return FolderSpec(data_root)
    if dataset not in DATASETS:
        raise DataError(f"--dataset must be one of {', '.join(ALL_DATASET_NAMES)}, got {dataset!r}")
    return DATASETS[dataset]
