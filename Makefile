# Two entry points for a fresh machine: `make run` and `make test`. Both create .venv with the pinned stack
# on first use (the stamp file is rebuilt when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed

.PHONY: run test setup clean-venv check-python

# The pinned stack (torch 2.14.1 and torchvision 0.29.1 among them) is built for Python 3.11: another Python is refused
# at once rather than left to pip's dependency resolution (over 10 minutes with 3.12 before it gave up).
check-python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null || { \
	  echo "videoktr needs Python 3.11 (the pinned torch 2.14.1 stack); $(PYTHON) is $$($(PYTHON) --version 2>&1)." \
	       "Run: make $(MAKECMDGOALS) PYTHON=python3.11" >&2; exit 2; }

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(MAKE) --no-print-directory check-python PYTHON=$(PYTHON)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/videoktr train

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
