# butd — every target that runs code depends on .venv, which is built on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUTD := $(VENV)/bin/butd
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: test bench lint demo clean system-deps extract train

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

.venv: $(VENV)/.installed

test: .venv
	$(PY) -m pytest $(PYTEST_ARGS)

bench: .venv
	@for f in bench/*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

lint: .venv
	$(VENV)/bin/ruff check src tests bench

demo: .venv
	$(BUTD) demo --out $(DEMO_DIR)

# make extract DATASET=coco ROOT=/data/coco EXTRACTOR=bua-r101 WEIGHTS=bua.safetensors [MODE=detect] [OUT=DIR]
EXTRACTOR ?= effnetlite0
OUT ?= features/$(DATASET)-$(EXTRACTOR)
extract: .venv
	@test -n "$(DATASET)" -a -n "$(ROOT)" || { echo "usage: make extract DATASET=coco|flickr8k|flickr30k|vg|vqa|folder|toy ROOT=DIR [EXTRACTOR=$(EXTRACTOR)] [WEIGHTS=F] [MODE=detect|grid|boxes] [OUT=DIR]"; exit 2; }
	$(BUTD) extract --dataset $(DATASET) --root $(ROOT) --extractor $(EXTRACTOR) --out $(OUT) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(MODE),--mode $(MODE)) $(EXTRACT_ARGS)

# Debian packages some tests use: chromium (report rendering) and a JRE (METEOR). Needs root.
system-deps:
	@command -v chromium >/dev/null && command -v java >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium default-jre-headless >/dev/null; }

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
