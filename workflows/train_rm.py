"""`lipo train-rm` as a Ray job entrypoint: `python -m workflows.train_rm CONFIG.yaml [key=value ...]`.

Reward-model training; the library's driver is `lipo.training.launch.launch` with a `RewardTask`.
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "train-rm".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["train-rm", *sys.argv[1:]])
