"""`lipo run` as a Ray job entrypoint: `python -m workflows.pipeline [CONFIG.yaml] [key=value ...]`.

The whole pipeline (default config: configs/quickstart.yaml); the library's driver is
`lipo.pipeline.run.run_pipeline`.
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "run".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["run", *sys.argv[1:]])
