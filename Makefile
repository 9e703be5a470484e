# vla-cl: the README's two set-up commands are `make razor` and `make test`; both run `make setup` first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MS_SKIP_ASSET_DOWNLOAD_PROMPT=1
THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PYTEST_ARGS ?=
ARGS ?=

.PHONY: setup test razor llm bench lint clean help

help:
	@echo "make setup   create ./.venv with torch, vla-cl, test tools and a CPU Vulkan driver (idempotent)"
	@echo "make test    setup, then the whole test suite offline"
	@echo "make razor   setup, then the main job: RL's Razor on the embedded default (ARGS='key=value ...')"
	@echo "make llm     setup, then RL's Razor on a language model (SmolLM2-135M offline default; ARGS=...)"
	@echo "make bench   setup, then every benchmark in benchmarks/"
	@echo "make lint    ruff over the package, tests and benchmarks"
	@echo "make clean   remove .venv and caches (runs/ is kept)"

setup:
	@$(PYTHON) scripts/bootstrap.py

test: setup
	$(OFFLINE) $(THREADS) $(BIN)/python -m pytest $(PYTEST_ARGS)

razor: setup
	$(OFFLINE) $(BIN)/vla-cl razor $(ARGS)

llm: setup
	$(OFFLINE) $(BIN)/vla-cl llm $(ARGS)

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(OFFLINE) $(THREADS) $(BIN)/python $$b || exit 1; done

lint: setup
	$(BIN)/python -m pip install -q ruff && $(BIN)/ruff check vla_cl tests benchmarks scripts

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
