"""`lipo build-lists` as a Ray job entrypoint: `python -m workflows.build_lists CONFIG.yaml [key=value ...]`.

Prompts -> K candidates -> scores -> labels + reference log-probs (Ray Data); the library's driver is
`lipo.lists.build.build_lists`.
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "build-lists".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["build-lists", *sys.argv[1:]])
