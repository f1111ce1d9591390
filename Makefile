# facebeam: `make demo` sets everything up and runs the main job on the sample;
# `make test` runs the test suite (it starts its own Elasticsearch).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE ?= ../shared/data/faces

.PHONY: env demo test clean

$(BIN)/facebeam: requirements.lock setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

env: $(BIN)/facebeam
	$(BIN)/facebeam models seed

demo: env
	$(BIN)/facebeam embed --input $(SAMPLE) --output out/sample

test: env
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf out .facebeam
