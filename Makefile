# Everything a fresh machine needs: `make train` (default job) and `make test` (the suite).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
FMNIST ?= /usr/share/datasets/fashion-mnist
CONFIG ?= configs/simclrv2/resnet18_fashion_mnist.yaml

.PHONY: install data slurm train test benchmark clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian package dataset-fashion-mnist"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else \
	  echo "Fashion-MNIST is missing from $(FMNIST). Install Debian's package 'dataset-fashion-mnist'" \
	       "(sudo apt-get install dataset-fashion-mnist) or pass data.path=/your/folder to ssl-zoo train." >&2; \
	  exit 1; \
	fi

# the real single-node SLURM cluster the submission tests use; as root it installs munge, slurmctld, slurmd,
# slurmdbd and MariaDB and writes /etc/slurm/slurm.conf and slurmdbd.conf (a slurm.conf it did not write is kept as
# slurm.conf.before-ssl-zoo)
slurm:
	slurm/local-cluster.sh up >/dev/null

# SSL_ZOO_SLURM_TESTS (tests/conftest.py): auto starts the cluster as root only, otherwise the SLURM tests are
# skipped with one line saying how to run them; require (.ci/run) always starts it; skip never does
test: $(STAMP) data
	@case "$${SSL_ZOO_SLURM_TESTS:-auto}" in \
	  skip) ;; \
	  require) $(MAKE) --no-print-directory slurm ;; \
	  *) if [ "$$(id -u)" = 0 ]; then $(MAKE) --no-print-directory slurm; fi ;; \
	esac
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=15 $(PYTEST_ARGS)

train: $(STAMP) data
	$(VENV)/bin/ssl-zoo train $(CONFIG) $(ARGS)

benchmark: $(STAMP) data
	$(VENV)/bin/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) *.egg-info
