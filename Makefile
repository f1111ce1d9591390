# facebeam. Two commands from a fresh clone:
#   make demo   set up .venv and the offline weights; embed + index the sample into the embedded index
#               (no server); query it with an HTML report; search two photos. One screen: a line per step.
#   make test   run the test suite (it starts its own Elasticsearch, Flink and Spark)
#   make unit   the pure-logic tier alone: no server, no JVM, no network port (well under 2 minutes)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SAMPLE ?= ../shared/data/faces
OUT ?= out/sample
# Two photos from SAMPLE for the query/search lines (the first two by name).
PHOTOS = $(shell find "$(SAMPLE)" -type f \( -iname '*.jpg' -o -iname '*.jpeg' -o -iname '*.png' \) 2>/dev/null | sort | head -2)

.PHONY: env lint demo sample test unit clean

$(BIN)/facebeam: requirements.lock setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

env: $(BIN)/facebeam
	@$(BIN)/facebeam models seed | tail -1

sample:
	$(if $(PHOTOS),,$(error no photos (.jpg/.jpeg/.png) under SAMPLE=$(SAMPLE): run `make demo SAMPLE=DIR` with a folder of photos, or put deepface's tests/unit/dataset (github.com/serengil/deepface) at ../shared/data/faces))

# The zero-server default: the embedded HNSW index (--store local). With a cluster (`facebeam es up`),
# the same commands take --store es.
# Each step prints its result line (`-v` on a command brings the logs back).
demo: sample env
	@echo '== run: embed the sample and index it into the embedded index'
	@$(BIN)/facebeam run --input $(SAMPLE) --output $(OUT) --index faces --store local
	@echo '== query: the top 5 for $(notdir $(PHOTOS)), with an HTML report'
	@$(BIN)/facebeam query --probes $(PHOTOS) --index faces --store local --k 5 \
	    --output $(OUT)-query --report $(OUT)-query/report.html
	@echo '== search: the same photos, as a table'
	@$(BIN)/facebeam search $(PHOTOS) --index faces --store local --k 3

test: env
	$(BIN)/ruff check .
	$(BIN)/pip install -q -r deploy/requirements-validate.txt
	$(BIN)/python -m pytest -q --durations=15 --junitxml=.facebeam/test-times.xml tests

# Tests are marked by what they need (pytest.ini, tests/conftest.py); `unit` needs nothing.
unit: $(BIN)/facebeam
	$(BIN)/python -m pytest -q -m unit tests

lint: $(BIN)/facebeam
	$(BIN)/ruff check .

clean:
	-$(BIN)/facebeam es down
	rm -rf out .facebeam
