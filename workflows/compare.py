"""`lipo compare` as a Ray job entrypoint: `python -m workflows.compare [CONFIG.yaml] [key=value ...]`.

Every objective and the list-size ablation on the same lists -> report; the library's driver is
`lipo.pipeline.compare.compare`.
Same as the CLI command, one-line errors included (`lipo.cli.main`); the stage is `lipo.stages`' entry "compare".
"""

import sys

from lipo.cli import main

if __name__ == "__main__":
    main(["compare", *sys.argv[1:]])
