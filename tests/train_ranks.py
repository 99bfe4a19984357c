"""One rank of a process group running several train.py commands in a row, one process group each.

    RANK=r WORLD_SIZE=n MASTER_ADDR=127.0.0.1 python tests/train_ranks.py '[[PORT, [train.py args]], ...]'

What torchrun would do for each command, without a launcher and a new interpreter (torch's import
is most of a small run's cost) per command: the tests of sweeps under torch.distributed use it.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402

if __name__ == "__main__":
    for port, argv in json.loads(sys.argv[1]):
        os.environ["MASTER_PORT"] = str(port)
        code = train.main(argv)
        if code:
            sys.exit(code)
