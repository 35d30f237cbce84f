# The two quick-start commands (see README): `make demo` and `make test`.
# Both create .venv on first use; nothing else needs installing by hand.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test services bench clean

$(STAMP): pyproject.toml setup.py protos/*.proto
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cidev run examples/hello.kdl

services:
	bash scripts/system-packages.sh
	bash scripts/services.sh

test: $(STAMP) services
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
