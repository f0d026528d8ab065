# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# What this project is tested with; pyproject.toml admits older clusters' versions.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The embedded default dataset: Debian's real Fashion-MNIST where apt is available (as root),
# else the code falls back to a torchvision download.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "note: no Debian dataset-fashion-mnist; Fashion-MNIST will be downloaded by torchvision"; fi

demo: setup data
	$(PY) -m pretrain --preset demo
	$(PY) -m pretrain.knn runs/demo
	$(PY) -m pretrain.lincls runs/demo --fast
	$(PY) -m pretrain.lincls runs/demo --fast --random-init

test: setup data
	$(PY) -m pytest

test-fast: setup data
	$(PY) -m pytest -m "not slow"

bench: setup
	$(PY) -m pretrain.bench

clean:
	rm -rf runs results/bench_*.json
