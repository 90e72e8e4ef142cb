"""`lipo sft` as a Ray job entrypoint: `python -m workflows.sft CONFIG.yaml [key=value ...]`.

Supervised fine-tuning; the library's driver is `lipo.training.launch.launch` with an `SFTTask`.
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "sft".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["sft", *sys.argv[1:]])
