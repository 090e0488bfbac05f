# Two entry points on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.ftlens-installed
# torch/torchvision pinned to the releases this workplace keeps on disk (pip on Python 3.11).
TORCH  := torch==2.14.1 torchvision==0.29.1
OUT    ?= runs/demo

.PHONY: demo demo-text test lint typecheck bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[dev,all]"
	# 20 labelled ImageNet photos the tests check the real weights on (data only: no dependencies)
	$(PIP) install -q --no-deps foolbox==3.3.4
	# real labelled text for the text family (Debian's fortunes: short texts filed by topic); needs root
	test -d /usr/share/games/fortunes || apt-get install -y -q fortunes || (apt-get update -q && \
		apt-get install -y -q fortunes) || echo "note: install Debian's fortunes package for the text data"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ftlens demo --out $(OUT)

demo-text: $(STAMP)
	$(VENV)/bin/ftlens demo text --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

# mypy on src/ftlens with the settings of pyproject.toml ([tool.mypy])
typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PIP) install -q -e ".[bench]"
	$(PY) bench/bench_cka.py
	$(PY) bench/bench_inversion.py
	$(PY) bench/bench_compare.py
	$(PY) bench/bench_peer.py
	$(PY) bench/bench_cka_peer.py --threads 2
	$(PY) bench/bench_kernels.py
	$(PY) bench/bench_layers.py --threads 1

clean:
	rm -rf $(VENV) runs .pytest_cache
