# make parity   run every case in cases/ on the built-in tiny checkpoint (or ARGS="--snapshot ...")
# make test     the project's own test suite
# make bench    benchmarks (see docs/performance.md)
#
# Both create or reuse .venv. On a CUDA box keep your own torch: make parity TORCH=system
# (the venv then sees the interpreter's site-packages and installs no torch).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=
ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(subst =,_,$(subst /,_,$(TORCH)))

.PHONY: parity test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
ifeq ($(TORCH),system)
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" || { echo "TORCH=system but this python has no torch"; exit 2; }
else
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
endif
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

parity: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/waypoint-parity parity $(ARGS)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n 2 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) .cache
