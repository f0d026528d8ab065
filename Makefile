# Two commands do all the set-up on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The console scripts pyproject.toml registers (mochi-grid, mochi-knn, ...), installed by setup.
BIN := $(VENV)/bin
# What this project is tested with; pyproject.toml admits older clusters' versions.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup data demo demo-run test test-fast bench bench-data ui slurm-up slurm-down clean

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

# The main job: the embedded (N, s, s') grid on Fashion-MNIST, on this machine's SLURM cluster if a
# controller answers, else locally on CPU (6 to 7 minutes on 2 cores, install included); tables land in results/demo/.
demo: setup data
	$(BIN)/mochi-grid

# One longer MoCHi run with kNN and linear probes against a random backbone (about 2 minutes).
demo-run: setup data
	$(BIN)/mochi-pretrain --preset demo
	$(BIN)/mochi-knn runs/demo
	$(BIN)/mochi-lincls runs/demo --fast
	$(BIN)/mochi-lincls runs/demo --fast --random-init

# The suite on TEST_WORKERS pytest-xdist workers: the SLURM tests on one of them, one after another
# (they wait on the cluster's jobs), the rest spread over the others; the slowest 25 printed at the end.
TEST_WORKERS ?= 3
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadgroup --durations=25

test: setup data
	$(PY) -m pytest $(PYTEST_PARALLEL)

# Before every commit: no end-to-end runs, no SLURM cluster needed.
test-fast: setup data
	$(PY) -m pytest $(PYTEST_PARALLEL) -m "not slow and not slurm"

# Browse every run (single runs and grids) in the MLflow UI, on this machine only.
UI_PORT ?= 5000
ui: setup
	@echo "MLflow UI: http://127.0.0.1:$(UI_PORT)  (store runs/mlflow.db; Ctrl-C stops it)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow server --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow.db \
		--host 127.0.0.1 --port $(UI_PORT) --workers 1

# A one-machine SLURM cluster with its state in $(SLURM_DIR); then: export SLURM_CONF=$(SLURM_DIR)/slurm.conf
SLURM_DIR ?= $(HOME)/.mochi-slurm
slurm-up:
	bash slurm/cluster.sh install
	bash slurm/cluster.sh start $(SLURM_DIR)

slurm-down:
	bash slurm/cluster.sh stop $(SLURM_DIR)

bench: setup
	$(BIN)/mochi-bench

# Input pipelines (cpu, gpu, dali if installed) and JPEG-fed vs synthetic training, on generated JPEGs.
bench-data: setup
	$(BIN)/mochi-bench-data

clean:
	rm -rf runs results/bench_*.json results/pipeline_batch.png results/demo
