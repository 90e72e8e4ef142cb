"""`lipo train` as a Ray job entrypoint: `python -m workflows.train CONFIG.yaml [key=value ...]`.

LiPO training on Ray Train + DeepSpeed; the library's driver is `lipo.training.launch.launch` with a
`ListwiseTask`.
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "train".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
