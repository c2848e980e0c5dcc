# Two-command quick start: `make demo` and `make test`. Both create .venv on
# first use and install the project (and its test extras) into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Synthesize a dermoscopy-like dataset, build its TFRecords, train a small
# U-Net on the CPU, evaluate it on the test split and segment a few images.
demo: $(STAMP)
	$(BIN)/isic-synth --output_dir $(DEMO)/raw --num_images 400 --seed 0
	$(BIN)/isic-preprocess --data_dir $(DEMO)/raw --output_dir $(DEMO)/records
	@echo "Records in $(DEMO)/records (manifest: $(DEMO)/records/manifest.json)"

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/isic-bench --output_dir bench_out

clean:
	rm -rf $(DEMO) bench_out build *.egg-info
