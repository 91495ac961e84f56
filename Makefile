# Two commands (see README): `make demo` runs the main job, `make test` runs the tests.
# Both create ./.venv on first use and install everything they need into it.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.cliptk-installed
# torch first, from the pinned release (on this project's CI machines it is served from local disk)
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install browser-deps notebooks-clean clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cliptk demo

# Debian's chromium for the real-browser tests (root on our machines; skipped with a note elsewhere)
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium install failed: browser tests will skip"; \
	  else echo "not root: install Debian's chromium to run the browser tests"; fi; }

test: $(STAMP) browser-deps
	$(BIN)/python -m cliptk.tools.check_notebooks notebooks
	CLIPTK_SMOKE=1 $(BIN)/python -m pytest -q --timeout=2400 --doctest-modules cliptk tests --nbmake --nbmake-timeout=900 notebooks

notebooks-clean:
	$(BIN)/python -m cliptk.tools.check_notebooks --strip notebooks

clean:
	rm -rf $(VENV) .pytest_cache
