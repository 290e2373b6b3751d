# Two entry points: `make demo` (synthetic data -> train -> evaluate -> report -> serve)
# and `make test`. Each creates .venv when missing and installs torch first, then the project
# with the extras it uses: demo trains and writes the report ([train]); test also needs [test].
#
# torch: on Linux the CPU build, asked for by its local version label (torch==2.13.0+cpu), so pip
# never picks PyPI's default Linux wheel, which is the CUDA build (several GB). pip looks for it
# wherever it is configured to look (this project's machines keep that wheel on disk, in pip's
# find-links); if it is found nowhere, the same version comes from PyTorch's CPU package index.
# Elsewhere (macOS, Windows) PyPI's torch==2.13.0 is already a CPU build.
# Override with e.g. `make install TORCH_SPEC="torch==2.13.0"`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
ifeq ($(shell uname -s),Linux)
TORCH_SPEC ?= torch==$(TORCH_VERSION)+cpu
else
TORCH_SPEC ?= torch==$(TORCH_VERSION)
endif
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: demo test install install-demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -qq "$(TORCH_SPEC)" || $(BIN)/pip install -qq "$(TORCH_SPEC)" --index-url $(TORCH_CPU_INDEX)
	touch $@

$(VENV)/.installed-train: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -qq -e ".[train]"
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -qq -e ".[train,test]"
	touch $@ $(VENV)/.installed-train

install-demo: $(VENV)/.installed-train

install: $(VENV)/.installed-test

demo: $(VENV)/.installed-train
	$(BIN)/movierec demo $(DEMO_ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) demo-output
