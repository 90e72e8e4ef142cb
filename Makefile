# The README's two Quickstart commands. Both build a fresh virtualenv in .venv (Python 3.11+).
PY ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip

.PHONY: quickstart test venv

$(VENV)/bin/activate:
	$(PY) -m venv $(VENV)

venv: $(VENV)/bin/activate

# Install lipo and run the whole pipeline end to end on the embedded default (configs/quickstart.yaml).
quickstart: venv
	$(PIP) install -q -e .
	$(VENV)/bin/lipo run

# Install lipo with its test extras and run the whole test suite (slow tests included).
test: venv
	$(PIP) install -q -e '.[test]'
	$(VENV)/bin/python -m pytest -q
