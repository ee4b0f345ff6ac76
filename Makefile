# `make demo` sets up and runs the Fashion-MNIST pre-training demo; `make test` runs the tests.
# Both create .venv on first use and reuse it afterwards.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
WORKDIR ?= workdir/fashion_mnist
# Eight host-platform devices let the tests exercise the sharded code paths on one CPU.
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8

.PHONY: setup data demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# The Fashion-MNIST files come from the Debian package dataset-fashion-mnist.
data:
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "Fashion-MNIST not found in $(FASHION_MNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist', or set FASHION_MNIST_DIR=/path/to/the/idx/files."; \
	    exit 1; \
	  fi; \
	fi

demo: setup data
	$(PY) -m bam_jax.main --config=configs/fashion_mnist.py --workdir=$(WORKDIR) \
	  --config.data.fashion_mnist_dir=$(FASHION_MNIST_DIR)

test: setup data
	XLA_FLAGS=$(TEST_XLA_FLAGS) $(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) workdir
