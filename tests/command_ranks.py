"""One rank of a process group running several of the project's commands in a row, one process
group each.

    RANK=r WORLD_SIZE=n MASTER_ADDR=127.0.0.1 python tests/command_ranks.py '[[PORT, "train.py", [args]], ...]'

What torchrun would do for each command (train.py, eval.py or predict.py), without a launcher and a new
interpreter per command: importing torch and the project is most of a small run's cost. The
tests under torch.distributed use it; one test still launches through torchrun itself
(test_distributed_training.py, two machines).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import eval as eval_cli  # noqa: E402
import predict as predict_cli  # noqa: E402
import train as train_cli  # noqa: E402

COMMANDS = {"train.py": train_cli.main, "eval.py": eval_cli.main, "predict.py": predict_cli.main}

if __name__ == "__main__":
    for port, script, argv in json.loads(sys.argv[1]):
        os.environ["MASTER_PORT"] = str(port)
        code = COMMANDS[script](argv)
        if code:
            sys.exit(code)
