# Every target creates the virtual environment first when it is missing (or when pyproject.toml changed).
VENV ?= .venv
PY := $(VENV)/bin/python
DS_CONFIG ?= ds_configs/zero2.json
# DeepSpeed compiles its CPU communication op on first use into torch's extension cache. One cache per virtual
# environment: two checkouts sharing ~/.cache/torch_extensions rebuild it in turn, and a build interrupted there
# leaves a lock on which every later DeepSpeed start waits forever.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned, so that no other requirement can pull a CUDA build onto a CPU machine
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]"
	# DeepSpeed's CPU communication op, compiled here once (about a minute), not by the first training run or test
	# that starts DeepSpeed; with the environment's ninja, as ranks under the launcher use it
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -c "from unitrans_ds.engine.distributed import init_distributed as i, \
	    shutdown_distributed as s; i(); s()"
	touch $@

.PHONY: setup test test-fast lint train train-2ranks format
setup: $(VENV)/.installed

# Two pytest workers (pytest-xdist), each taking whole test files, so that a file's module fixtures (shards, a
# reference run, a tracking server) are built once. In one process the suite kept a 2-core machine about 60% busy
# (one-rank tests, processes starting one after another); two workers about 90%. TEST_WORKERS=0: this process only.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist loadfile --durations=15

# A quick check while developing: every test but those marked slow (multi-process runs); CI runs `make test`.
test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -rs -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The main job: UniTrans retrieval on the demo shards with the embedded default config.
train: $(VENV)/.installed
	PATH=$(abspath $(VENV))/bin:$$PATH deepspeed --num_accelerators 1 launchers/train.py --ds_config $(DS_CONFIG)

train-2ranks: $(VENV)/.installed
	PATH=$(abspath $(VENV))/bin:$$PATH deepspeed --num_accelerators 2 launchers/train.py --ds_config $(DS_CONFIG)
