# butd — every target that runs code depends on .venv, which is built on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUTD := $(VENV)/bin/butd
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=
# test workers (pytest-xdist): one per core; each test file runs whole on one worker (module fixtures once)
TEST_WORKERS ?= auto

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER = 0
export RAY_USAGE_STATS_ENABLED = 0

.PHONY: test bench lint demo clean system-deps extract train toy-data parity bench-parity bench-gpu

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

.venv: $(VENV)/.installed

test: .venv
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# CPU benchmarks; bench-parity (needs detectron2) and bench-gpu (needs a CUDA GPU) run on their own
BENCH_SEPARATE := bench/detector_vs_detectron2.py bench/gpu.py
bench: .venv
	@for f in $(filter-out $(BENCH_SEPARATE),$(wildcard bench/*.py)); do echo "== $$f"; $(PY) $$f || exit 1; done

# One unattended run on a CUDA GPU, under 8 minutes: GPU_OUT (JSON) and its .md table (BENCHMARKS.md)
GPU_OUT ?= gpu.json
bench-gpu: .venv
	$(PY) bench/gpu.py --out $(GPU_OUT) $(BENCH_ARGS)

# Parity of bua-r101 with detectron2 / an OpenCV reference, end to end on real photos (not part of `make
# test`: it needs a second venv holding a pure-Python detectron2 0.6, built once into $(PARITY_VENV)).
# Writes the per-photo table to PARITY_OUT (default PARITY.table.md; PARITY.md explains it).
PARITY_VENV ?= .venv-parity
PARITY_OUT ?= PARITY.table.md
$(PARITY_VENV)/.installed: $(VENV)/.installed tools/install_detectron2_parity.sh
	bash tools/install_detectron2_parity.sh $(abspath $(PARITY_VENV)) $(abspath $(VENV))
	touch $@

parity: $(PARITY_VENV)/.installed
	PYTHONPATH=$(CURDIR)/src PARITY_OUT=$(PARITY_OUT) $(PARITY_VENV)/bin/python -m pytest -v -s -o timeout=5400 \
	  tests/extract/test_parity_detectron2.py $(PYTEST_ARGS)

# bua-r101 vs py-bottom-up-attention's detectron2 model on CPU, same weights and photos (BENCHMARKS.md)
bench-parity: $(PARITY_VENV)/.installed
	PYTHONPATH=$(CURDIR)/src $(PARITY_VENV)/bin/python bench/detector_vs_detectron2.py $(BENCH_ARGS)

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

# make train MODEL=updown|sat-soft|sat-hard|transformer|vqa — on the toy world unless DATASET= (with ROOT=, using
# the store `make extract` wrote) or FEATURES= (+ CAPTIONS= or QUESTIONS=/ANNOTATIONS=/VAL_ARGS=) point at
# real data; CONFIG= overrides the YAML (toy: small settings; real data: configs/$(MODEL).yaml, the papers').
# An existing RUN is never replaced silently: rerun with TRAIN_ARGS=--resume (continue) or --overwrite.
MODEL ?= updown
TOY ?= data/toy
RUN ?= runs/$(MODEL)
TOY_STORE = $(TOY)/features/$(if $(filter sat-%,$(MODEL)),grid,boxes)
REAL = $(FEATURES)$(DATASET)
TRAIN_FEATURES = $(or $(FEATURES),$(if $(DATASET),features/$(DATASET)-$(EXTRACTOR),$(TOY_STORE)))
TRAIN_CAPTIONS = $(or $(CAPTIONS),$(if $(DATASET),$(ROOT)/dataset_$(DATASET).json,$(TOY)/dataset_coco.json))
TRAIN_CONFIG = $(or $(CONFIG),$(if $(REAL),configs/$(MODEL).yaml,src/butd/demo_configs/$(MODEL).yaml))
VQA_DIR = $(TOY)/vqa
train: .venv
	@if [ -z "$(REAL)" ]; then $(MAKE) --no-print-directory toy-data; fi
ifeq ($(MODEL),vqa)
	$(BUTD) train --model vqa --config $(TRAIN_CONFIG) --features $(TRAIN_FEATURES) --out $(RUN) \
	  --questions $(or $(QUESTIONS),$(VQA_DIR)/v2_OpenEnded_mscoco_train2014_questions.json) \
	  --annotations $(or $(ANNOTATIONS),$(VQA_DIR)/v2_mscoco_train2014_annotations.json) \
	  $(if $(REAL),$(VAL_ARGS),--val-questions $(VQA_DIR)/v2_OpenEnded_mscoco_val2014_questions.json \
	  --val-annotations $(VQA_DIR)/v2_mscoco_val2014_annotations.json) $(TRAIN_ARGS)
else
	$(BUTD) train --model $(MODEL) --config $(TRAIN_CONFIG) --features $(TRAIN_FEATURES) \
	  --captions $(TRAIN_CAPTIONS) --out $(RUN) $(TRAIN_ARGS)
endif

# The toy world and its two effnetlite0 stores (given boxes, grid), made once.
toy-data: .venv
	@test -f $(TOY)/dataset_coco.json || $(BUTD) toy make $(TOY) --images 300
	@test -f $(TOY)/features/boxes/manifest.json || $(BUTD) extract --dataset toy --root $(TOY) \
	  --extractor effnetlite0 --mode boxes --out $(TOY)/features/boxes --workers 2
	@test -f $(TOY)/features/grid/manifest.json || $(BUTD) extract --dataset toy --root $(TOY) \
	  --extractor effnetlite0 --mode grid --out $(TOY)/features/grid --workers 2

# Debian packages some tests use: chromium (report rendering) and a JRE (METEOR). Needs root.
system-deps:
	@command -v chromium >/dev/null && command -v java >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium default-jre-headless >/dev/null; }

clean:
	rm -rf $(VENV) $(PARITY_VENV) $(DEMO_DIR) .pytest_cache data/toy runs
