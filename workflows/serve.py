"""`lipo serve` as a Ray job entrypoint: `python -m workflows.serve CONFIG.yaml [key=value ...] [--insecure]`.

The policy and reward model over HTTP (Ray Serve), until Ctrl-C; the library's code is
`lipo.serving.local.serve` (also deployable with `serve deploy deploy/serve/lipo.yaml`).
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "serve".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
