"""`lipo eval` as a Ray job entrypoint: `python -m workflows.evaluate CONFIG.yaml [key=value ...]`.

Win rate of the policy against the baseline; the library's driver is `lipo.evaluation.stage.run_eval`.
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "eval".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["eval", *sys.argv[1:]])
