# Two-command quick start: `make demo` and `make test`. Both create .venv on
# first use and install the project (and its test, export and pretrained extras) into it, at the
# exact versions of constraints.txt (the ones the test suite passed with).
PYTHON      ?= python3
VENV        := .venv
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed-stamp
DEMO        := demo
CONSTRAINTS := constraints.txt
EXTRAS      := test,export,pretrained

.PHONY: install demo lint test bench gpu-check constraints clean

install: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	@touch $(STAMP)

# Synthesize a dermoscopy-like dataset, build its TFRecords, train a small
# U-Net on the CPU, evaluate it on the test split and segment a few images.
demo: $(STAMP)
	$(BIN)/isic-synth --output_dir $(DEMO)/raw --num_images 400 --seed 0
	$(BIN)/isic-preprocess --data_dir $(DEMO)/raw --output_dir $(DEMO)/records
	$(BIN)/isic-train --flagfile launch/configs/demo.flags --data_dir $(DEMO)/records --model_dir $(DEMO)/model
	$(BIN)/isic-evaluate --data_dir $(DEMO)/records --model $(DEMO)/model --split test
	$(BIN)/isic-evaluate --data_dir $(DEMO)/records --model $(DEMO)/model --split test --full_resolution
	@mkdir -p $(DEMO)/new_images && cp $$(ls $(DEMO)/raw/images/*.jpg | head -n 4) $(DEMO)/new_images/
	$(BIN)/isic-predict --model $(DEMO)/model --input_dir $(DEMO)/new_images --output_dir $(DEMO)/predictions --overlays
	$(BIN)/isic-export --model $(DEMO)/model --output_dir $(DEMO)/export
	@echo
	@echo "Demo done. Model: $(DEMO)/model/ISIC-UNet.keras (best: $(DEMO)/model/best/), plots: $(DEMO)/model/{loss,accuracy,dice}.png,"
	@echo "history: $(DEMO)/model/history.csv, TensorBoard: tensorboard --logdir $(DEMO)/model/logs,"
	@echo "test metrics: $(DEMO)/model/eval-test*/metrics.json (review page: report.html beside it),"
	@echo "predicted masks: $(DEMO)/predictions/ (with confidence.csv and report.html),"
	@echo "exported model: $(DEMO)/export/ (serving/ SavedModel with JPEG/PNG in, mask out; model.onnx; model.tflite; README.md)"

# ruff.toml holds the rules; `$(BIN)/ruff format .` and `$(BIN)/ruff check --fix .` fix most findings.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# --durations: the slowest tests, so a new expensive one is seen (the suite's budget: 8 min).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=25 tests

bench: $(STAMP)
	$(BIN)/isic-bench --output_dir bench_out

# Before a long GPU job: the U-Net at 64 filters on 1 GPU, all GPUs and 2 processes
# (README, "Before a long GPU run"); exits 1 on a failed check, 0 without a GPU.
gpu-check: $(STAMP)
	$(BIN)/isic-bench --output_dir gpu_check --stages gpu

# Refreshes constraints.txt with the newest versions setup.py allows, resolved in a
# fresh venv (so it lists exactly what the project pulls in). Then run `make test` on
# them (`rm -rf $(VENV) && make test`) and commit the file if the suite passes.
CONSTRAINTS_VENV := .venv-constraints
constraints:
	rm -rf $(CONSTRAINTS_VENV)
	$(PYTHON) -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CONSTRAINTS_VENV)/bin/python -m pip install --quiet -e '.[$(EXTRAS)]'
	{ sed -n '/^#/p' $(CONSTRAINTS); $(CONSTRAINTS_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(CONSTRAINTS_VENV)

clean:
	rm -rf $(DEMO) bench_out gpu_check build *.egg-info
