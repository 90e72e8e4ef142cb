"""Checks the lower-bound lane's venv (`make test-lower`): run by .venv-lower's python, ci/lower-bounds.txt as argv[1].

Fails unless every pinned distribution is the pinned version AND is found in .venv-lower's own site-packages (so it
shadows .venv's newer copy), the modules import from there, and `pip check` finds every requirement met.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import subprocess
import sys
import sysconfig
from pathlib import Path

# distribution -> module, for the import check
MODULES = {"transformers": "transformers", "deepspeed": "deepspeed", "mlflow": "mlflow", "pydantic": "pydantic",
           "typer": "typer", "pyyaml": "yaml", "pyarrow": "pyarrow", "tqdm": "tqdm", "safetensors": "safetensors",
           "httpx": "httpx", "matplotlib": "matplotlib", "peft": "peft", "tokenizers": "tokenizers",
           "huggingface-hub": "huggingface_hub"}
# `pip check` lines allowed, by the requiring distribution: test-only tools that lipo does not install at runtime.
# cfn-lint (pulled in by the test extra's moto[server]) wants pyyaml>=6.0.3; lipo itself needs only pyyaml>=6.
ALLOWED = {"cfn-lint"}


def main(pins_file: str) -> int:
    lane = Path(sysconfig.get_paths()["purelib"]).resolve()
    errors = []
    for line in Path(pins_file).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, want = (s.strip() for s in line.split("=="))
        dist = md.distribution(name)
        where = Path(dist.locate_file("")).resolve()
        if dist.version != want or where != lane:
            errors.append(f"{name}: want {want} from {lane}, found {dist.version} in {where}")
        if name in MODULES:
            mod = importlib.import_module(MODULES[name])
            if not Path(mod.__file__).resolve().is_relative_to(lane):
                errors.append(f"{name}: module {MODULES[name]} imports from {mod.__file__}, not {lane}")
        print(f"  {name}=={dist.version}")
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    broken = [ln for ln in check.stdout.splitlines()
              if ln.strip() and not ln.startswith("No broken") and ln.split()[0].lower() not in ALLOWED]
    errors += [f"pip check: {ln}" for ln in broken]
    for e in errors:
        print(f"lower-bound lane: {e}", file=sys.stderr)
    print("lower-bound lane: pins verified" if not errors else f"lower-bound lane: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
