# Two commands do everything on a fresh machine: `make demo` and `make test`.
#
# torch: with no GPU (no nvidia-smi) we install the CPU build torch==2.13.0 first, so the
# package's `torch>=2.2` requirement is already met and pip downloads no CUDA packages.
# Where nvidia-smi exists the choice is yours: TORCH defaults to plain `torch` (CUDA wheels);
# override it, e.g. `make test TORCH="torch==2.13.0"`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,plot,tune,onnx,serve]"
	touch $@

demo: install
	rm -rf runs/demo-sentiment
	$(BIN)/nlpseq train pipelines/sentiment.yaml --out runs/demo-sentiment --quiet
	$(BIN)/nlpseq evaluate runs/demo-sentiment corpora/sentiment/dev.tsv
	printf 'a warm and wonderful film\nthe plot is dull and the acting is awful\nnot bad at all\n' \
	  | $(BIN)/nlpseq predict runs/demo-sentiment --json

test: install
	$(BIN)/python -m pytest -q -x

lint: install
	$(BIN)/ruff check nlpseq tests

bench: install
	$(BIN)/nlpseq bench

clean:
	rm -rf runs .pytest_cache
