# The README's commands: `make test` and `make demo`. Both install what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: install datasets test test-fast demo reproduce record-slice profile clean

install: $(VENV)/.installed datasets

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package; CIFAR-10 is read from ../shared.
datasets:
	@if [ ! -f $(FASHION_MNIST_DIR)/t10k-images-idx3-ubyte.gz ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	fi

test: install
	$(PY) -m pytest -q

# Everything but timm's generic suite and the slow training tests.
test-fast: install
	$(PY) -m pytest -q -m 'not slow' --deselect tests/test_timm_suite.py

# Offline: seed a project-local Hugging Face cache from hub_configs/, verify, load every published tag,
# evaluate one pretrained checkpoint on the Fashion-MNIST test split, print the results table.
HF_CACHE ?= .cache/hf-hub
DEMO_MODEL ?= wt_resnet_small.fmnist
OFFLINE := HF_HUB_OFFLINE=1 HF_HUB_CACHE=$(HF_CACHE)
demo: install
	$(PY) -m wt_zoo.hub install-cache --cache-dir $(HF_CACHE)
	$(OFFLINE) $(PY) -m wt_zoo.hub verify
	$(OFFLINE) $(PY) -m wt_zoo.hub demo
	$(OFFLINE) $(PY) validate.py --model $(DEMO_MODEL) --pretrained --dataset fashion_mnist --split test
	$(PY) -m wt_zoo.hub table

# NAMES='wt_resnet_tiny.c10 ...' narrows reproduce and record-slice to some tags (default: all).
NAMES ?=
# Re-validate every published tag on the full test split against its card's top-1; non-zero exit on a
# mismatch. Not in CI (about 25 minutes on 2 CPU cores): CI re-validates the fixed slice instead.
reproduce: install
	$(PY) -m wt_zoo.hub reproduce $(NAMES)

# After publishing or replacing checkpoints: measure every tag's CI slice into hub_configs/<name>/slice_results.json
# (the card and SHA256SUMS follow). Idempotent.
record-slice: install
	$(PY) -m wt_zoo.hub record-slice $(NAMES)

profile: install
	$(PY) -m wt_zoo.profile

clean:
	rm -rf $(VENV) .cache build *.egg-info
