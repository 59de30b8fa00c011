# Two commands on a fresh machine (see README):
#   make demo   installs into .venv (CPU), then runs the main job on the bundled footage
#   make test   installs into .venv (CPU), then runs the test suite
# and the loop demo after `make demo`:
#   make demo-train   tiny fine-tune on out/demo → checkpoint → multishot generate → multishot eval
# and, on a GPU machine (issue 30, ~8 min on one H100/H200):
#   make learn        synthetic world → VAE → four ablation variants → generate → classify → table
#   make learn-product  the same ablation through the product (docs/learn.md): world → multishot
#                     pipeline run → shards → multishot train → generate → eval → table
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo demo-train learn learn-product test bench clean

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# 1. CPU torch first (a bare `torch` would pull a CUDA build), 2. the project under the same pins.
	$(PIP) install -q -c constraints/cpu.txt torch torchvision
	$(PIP) install -q -c constraints/cpu.txt -e ".[dev]"
	touch $@

# Chromium (Debian's package) for the headless-browser test of `multishot shards report`: installed
# when missing and we are root with apt-get (CI); elsewhere a note, and that test skips.
install: $(VENV)/.installed
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "note: no chromium (apt-get install chromium): the HTML report's browser test will skip"; fi

demo: install
	$(VENV)/bin/multishot pipeline run --config configs/pipeline/demo.yaml

demo-train: install
	MULTISHOT=$(VENV)/bin/multishot PYTHON=$(PY) sh demo/train.sh

LEARN_OUT ?= out/learn
# one GPU, ~16 min: the world's VAE (three recipes at once, the one whose held-out films read back
# the most characters kept; benchmarks/learn_vae_gpu.sh), then the four variants on it at 4,000
# steps (1,500 in the last run left the character unlearned: docs/learn.md)
learn: install
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH R=$(CURDIR) OUT=$(abspath $(LEARN_OUT))/vae_select bash benchmarks/learn_vae_gpu.sh
	$(PY) -m multishot.learn run --out $(LEARN_OUT) --train-films 6000 --vae-init $(LEARN_OUT)/vae_select/vae --vae-steps 0 \
	  --steps 4000 --train-seconds 480 --batch 32 --sample-steps 20

LEARN_PRODUCT_OUT ?= out/learn_product
learn-product: install
	$(PY) -m multishot.learn_product all --out $(LEARN_PRODUCT_OUT) --concurrent 4 --set-generate runtime.device=auto

test: install
	$(VENV)/bin/python -m pytest -q

bench: install
	$(VENV)/bin/python benchmarks/pipeline.py

clean:
	rm -rf $(VENV) out
