# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOB    ?= jobs/demo.yaml
# pytest-xdist workers for `make test` (0: one process). The SLURM tests share one dev cluster and
# run on one worker, one at a time (tests/plugins/xdist_grouping.py); the rest spread over the others.
TEST_WORKERS ?= 2

.PHONY: install demo test lint bench gpu-check mlflow-ui clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m skinhpc.launch $(JOB) --wait

test: $(STAMP)
	$(PY) -m ruff check skinhpc tests bench
	$(VENV)/bin/lint-imports --config setup.cfg
	$(PY) -m pytest -ra -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check skinhpc tests bench
	$(VENV)/bin/lint-imports --config setup.cfg

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

# On a GPU machine: bench/gpu.py's figures, then whole bf16 members of jobs/ensemble.yaml's model (one GPU;
# two processes under accelerate launch when two GPUs are present), one table, under 8 minutes.
# Without a GPU it says so and exits 0. Needs the venv (`make install`), not a rebuild of it.
gpu-check:
	$(PY) bench/gpu.py --check

mlflow-ui: $(STAMP)
	@echo "open http://127.0.0.1:5000, choose Model training (top left) once, or open #/experiments/<id>?workflowType=machine_learning"
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf $(VENV) .pytest_cache
