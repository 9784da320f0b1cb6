# Two commands: `make run` (end to end on MovieLens-1M) and `make test`.
PYTHON_VERSION := 3.10
PY ?= python$(PYTHON_VERSION)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export PYTHONHASHSEED := 0

DATA := data/movielens-1m
RUN_ROOT := runs/movielens-1m

.PHONY: install run test test-fast lint lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/python -m pipeline movielens --out $(DATA) --cache data/cache
	$(BIN)/python -m pipeline run --dataset $(DATA)/dataset.yaml --run-root $(RUN_ROOT) --eval-slice genres

test: install lint
	$(BIN)/python -m pytest tests -n 2

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow" -n 2

lint: install
	$(BIN)/ruff check .

lock: install
	(echo "# Full lock for Python 3.10.13. Regenerate with: make lock"; \
	 $(BIN)/pip freeze --exclude-editable | grep -v '^ssl4rec') > constraints.txt

clean:
	rm -rf $(VENV) runs build *.egg-info
