# moebif: two commands on a fresh machine, `make reproduce` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# every install step goes through the torch pin (a CPU wheel; anything else pulls CUDA)
INSTALL := $(PIP) install --quiet --disable-pip-version-check -c constraints.txt
OUT    ?= results
JOBS   ?= 2

.PHONY: venv reproduce reproduce-quick test test-slow bench lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (set PYTHON=...)" >&2; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(INSTALL) --upgrade pip
	$(INSTALL) -e ".[all]"
	@touch $@

reproduce: venv
	$(BIN)/moebif reproduce --out $(OUT) --jobs $(JOBS)

reproduce-quick: venv
	$(BIN)/moebif reproduce --quick --out $(OUT)-quick --jobs $(JOBS)

test: venv
	$(BIN)/python -m pytest

test-slow: venv
	$(BIN)/python -m pytest -m slow

# every benchmark runs; the target fails at the end if any was below target (each writes its
# table and checks to bench-results/<name>.json)
bench: venv
	@failed=""; for f in benchmarks/bench_*.py; do echo "== $$f"; \
	  $(BIN)/python $$f || failed="$$failed $$f"; done; \
	  if [ -n "$$failed" ]; then echo "below target or failed:$$failed" >&2; exit 1; fi

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(OUT) $(OUT)-quick .pytest_cache .hypothesis
