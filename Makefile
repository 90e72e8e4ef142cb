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

# The lower-bound lane: the tests below against each runtime dependency at the LOWEST version pyproject.toml allows
# (ci/lower-bounds.txt; `make test` covers the newest). Run by .ci/run after `make test`; about 3-4 minutes on 2 cores.
# Decision: the lane venv reuses .venv's packages instead of a second full install (~2 GiB, and CI's 45-minute budget
# is nearly spent by `make test`): .venv-lower gets no pip of its own, a .pth that appends .venv's site-packages,
# and only the pinned packages (pip --no-deps --ignore-installed), which shadow .venv's copies. ci/check_lower.py
# then fails the lane unless each pin is what imports, from .venv-lower, and pip check finds every requirement met.
# The tests: the sampler (lipo.models.generate, via Serve's policy code and build-lists' stages), packing, attention
# and the chunked LM head, one short Ray Train + DeepSpeed run that MLflow records, MLflow tracking and the eval report
# (matplotlib), and config/pydantic/typer parsing.
LOWER_VENV ?= .venv-lower
LOWER_TESTS := \
	tests/lipo/models/test_generate.py \
	tests/lipo/serving/test_serve_units.py::test_policy_code_matches_the_shared_sampler_and_logps \
	tests/lipo/lists/test_stages.py \
	tests/lipo/models/test_packing.py \
	tests/lipo/models/test_attention.py \
	tests/lipo/models/test_scored_logps.py::test_chunked_head_matches_full_logits \
	tests/lipo/models/test_scored_logps.py::test_head_sees_one_column_and_passes_through_otherwise \
	tests/lipo/models/test_scored_logps.py::test_concurrent_callers_on_one_model_get_their_own_results \
	tests/lipo/models/test_scored_logps.py::test_unverified_family_uses_its_own_logits \
	tests/lipo/training/test_train_e2e.py::test_mlflow_holds_run_params_metrics_and_model \
	tests/lipo/test_tracking.py \
	tests/lipo/evaluation/test_eval_report.py \
	tests/lipo/test_config.py \
	tests/lipo/pipeline/test_pipeline_config.py \
	tests/lipo/training/test_training_units.py::test_config_names_are_the_losses_names \
	tests/lipo/serving/test_serve_units.py::test_config_defaults_names_and_deployment_options \
	tests/lipo/test_cli.py::test_missing_model_path \
	tests/lipo/test_cli.py::test_every_example_config_loads \
	tests/lipo/test_cli.py::test_overrides_parse_yaml_values

.PHONY: test-lower
test-lower: venv
	$(VENV)/bin/python -c 'import lipo, pytest, moto' 2>/dev/null || $(PIP) install -q -e '.[test]'
	rm -rf $(LOWER_VENV)
	$(VENV)/bin/python -m venv --without-pip $(LOWER_VENV)
	main=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	lane=$$($(LOWER_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	echo "import site; site.addsitedir('$$main')" > "$$lane/zz-main-venv.pth"
	$(LOWER_VENV)/bin/python -m pip install -q --no-deps --ignore-installed --no-build-isolation -r ci/lower-bounds.txt
	$(LOWER_VENV)/bin/python ci/check_lower.py ci/lower-bounds.txt
	$(LOWER_VENV)/bin/python -m pytest -q -p no:cacheprovider $(LOWER_TESTS)
