# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.install-stamp
DEMO_OUT ?= demo_output

.PHONY: install demo test lint bench peers clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Install the CPU build of torch where no NVIDIA GPU is present: the pinned version resolves to the
# local CPU wheel, whereas an unpinned `torch` pulls several GB of CUDA packages.
$(STAMP): pyproject.toml | $(PY)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	    echo "GPU found: installing the default (CUDA) torch build"; \
	    $(PY) -m pip install --quiet "torch>=2.1"; \
	else \
	    echo "No GPU: installing the CPU build of torch"; \
	    $(PY) -m pip install --quiet "torch==2.13.0" || \
	    $(PY) -m pip install --quiet "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(PY) -m pip install --quiet -e ".[nn,dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emrestore demo --out $(DEMO_OUT)
	$(VENV)/bin/emrestore benchmark --quick --no-progress -o $(DEMO_OUT)/benchmark

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/simulate_speed.py

# The GPL peers (tk_r_em, benchmark only: never a dependency) live in their own venv, beside
# emrestore, so that `restore_quality.py` can run both in one process. TensorFlow 2.14 needs
# numpy < 2 and Python <= 3.11.
PEERS ?= .venv-peers
peers:
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install --quiet --upgrade pip
	$(PEERS)/bin/pip install --quiet "torch==2.13.0" || \
	    $(PEERS)/bin/pip install --quiet "torch>=2.1" --index-url https://download.pytorch.org/whl/cpu
	$(PEERS)/bin/pip install --quiet "tensorflow-cpu==2.14.1" tk_r_em bm3d "numpy<2"
	$(PEERS)/bin/pip install --quiet -e ".[nn]" "numpy<2"
	@echo "now: TF_CPP_MIN_LOG_LEVEL=2 $(PEERS)/bin/python benchmarks/restore_quality.py"

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
