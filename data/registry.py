"""The benchmarks by ``--dataset`` name. Adding one: write data/NAME.py with a DatasetSpec subclass
(see data/spec.py) and add its instance here; then a training config in configs/
(docs/datasets.md, 'Adding a dataset')."""

from data.cityscapes import CITYSCAPES27
from data.cocostuff import COCOSTUFF27
from data.cocostuff171 import COCOSTUFF171
from data.potsdam import POTSDAM3
from data.spec import DataError, DatasetSpec

DATASETS = {spec.name: spec for spec in (COCOSTUFF27, COCOSTUFF171, CITYSCAPES27, POTSDAM3)}
DATASET_NAMES = tuple(DATASETS)
DEFAULT_DATASET = COCOSTUFF27.name


def get_dataset(dataset):
    """The spec of a dataset name (a spec is returned as it is)."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    if dataset not in DATASETS:
        raise DataError(f"--dataset must be one of {', '.join(DATASET_NAMES)}, got {dataset!r}")
    return DATASETS[dataset]
