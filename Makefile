# hts — the two set-up commands of the README:
#   make demo   create .venv, write a synthetic 96-well ND2 plate, ingest, annotate, segment and measure it,
#               check QC, query, report and export it
#   make test   create .venv, lint (ruff) and run the whole test suite (doctests and the CLI reference check included)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := workspace

.PHONY: setup demo lint test bench screenshots clean

# torch is installed first, on its own: TORCH_INDEX picks the build (empty: pip's configured indexes; here that is
# the CPU wheel on local disk). On a plain Linux machine PyPI's torch 2.13.0 is the CUDA build (several GB); for the
# CPU build: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(BIN)/hts: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet 'torch==2.13.0' $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e '.[dev,lake]'
	@touch $@

setup: $(BIN)/hts

demo: setup
	mkdir -p $(DEMO)
	cd $(DEMO) && ../$(BIN)/hts demo demo-data --format nd2 --plate-type 96 --fields 2 --size 512
	cd $(DEMO) && ../$(BIN)/hts ingest demo-data/DEMO-PLATE.nd2
	cd $(DEMO) && ../$(BIN)/hts annotate DEMO-PLATE --platemap demo-data/platemap.csv
	cd $(DEMO) && ../$(BIN)/hts segment --engine classic
	cd $(DEMO) && ../$(BIN)/hts info DEMO-PLATE
	cd $(DEMO) && ../$(BIN)/hts qc --metric Cells_Intensity_NucCytoRatio_GFP
	cd $(DEMO) && ../$(BIN)/hts query --preset cell-count --limit 12
	cd $(DEMO) && ../$(BIN)/hts profile
	cd $(DEMO) && ../$(BIN)/hts activity --show 12
	cd $(DEMO) && ../$(BIN)/hts similar CMPD-001 --top 5
	cd $(DEMO) && ../$(BIN)/hts report DEMO-PLATE -v cell_count -v Cells_Intensity_NucCytoRatio_GFP
	cd $(DEMO) && ../$(BIN)/hts export --out cells --overwrite
	cd $(DEMO) && ../$(BIN)/hts export --profiles --out profiles --overwrite
	@echo
	@echo "Explore the demo plate in the web browser (heatmap -> well -> field -> cells):"
	@echo "  cd $(DEMO) && ../$(BIN)/hts serve      # then open http://127.0.0.1:8000/"

# lint: ruff's checks and formatting (pyproject.toml [tool.ruff]); part of the test command, so CI runs it.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest exits 5 when no test was collected; that is a failure of the suite, not a pass.
test: setup lint
	$(BIN)/python -m pytest -q --timeout 900

bench: setup
	$(BIN)/python -m benchmarks ingest && $(BIN)/python -m benchmarks pipeline --workers 2 && $(BIN)/python -m benchmarks cells --rows 1e6

# screenshots: the plate browser's pages as its Chromium tests see them, into docs/img/serve/ (docs/serve.md)
screenshots: setup
	HTS_SCREENSHOTS=docs/img/serve $(BIN)/python -m pytest -q tests/web/test_pages.py

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
