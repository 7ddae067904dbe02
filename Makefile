# AutoNorm. `make demo` and `make test` install into .venv first if it is missing.
PY      ?= .venv/bin/python
DATA    ?= ../shared/data
EPOCHS  ?= 3
PRETRAIN_EPOCHS ?= 2
TEACHER_EPOCHS ?= 15
# extra overrides for table-full, e.g. TABLE_ARGS="data.train_subset=10000 eval.max_images=2000"
TABLE_ARGS ?=
OUT     ?= outputs
# make dg: the students (conf/dg/ names; empty = the list in conf/sweep/dg.yaml), extra overrides
DG_NORMS ?=
DG_ARGS ?=
# make table-recipe: the rows (conf/experiment/ names; empty = the list in conf/sweep/base/table.yaml)
ROWS    ?=
RECIPE_ARGS ?=
export OMP_WAIT_POLICY ?= passive

.PHONY: install demo test test-all table table-full dg table-recipe bench lint clean

.venv/.installed: pyproject.toml constraints.txt
	python3 -m venv .venv
	.venv/bin/pip install --upgrade --quiet pip
	# pyproject.toml states ranges; constraints.txt holds the exact versions tested together
	.venv/bin/pip install --quiet -c constraints.txt -e '.[dev]'
	# build the C++ norm kernels now (~15 s, cached in ~/.cache/autonorm); a failure only warns
	.venv/bin/python -c "from autonorm.kernels import native; print('C++ norm kernels:', native.status())"
	touch $@

install: .venv/.installed

## the main job on the embedded mini data: AutoNorm (soft gate) ViT on the MNIST mini
demo: install
	$(PY) train.py data=mnist_mini norm=autonorm gate=soft data.batch_size=64 trainer.max_epochs=12

## the fast test suite (slow tests are marked and skipped)
test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

## the baseline table on the embedded minis (one multirun sweep)
table: install
	$(PY) train.py -m sweep=table_mini

## the baseline table on the full data sets in $(DATA)
table-full: install
	$(PY) train.py -m sweep=table_full paths.data_root=$(DATA) trainer.max_epochs=$(EPOCHS) \
		transfer.pretrain.max_epochs=$(PRETRAIN_EPOCHS) distill.teacher.max_epochs=$(TEACHER_EPOCHS) $(TABLE_ARGS)

## domain generalisation from MNIST: the students at the fast_mnist budget x 3 seeds, scored on
## the digit targets; finished runs kept in docs/results/dg (a re-run continues where it stopped)
dg: install
	$(PY) scripts/collect_results.py restore docs/results/dg $(OUT)/dg/fast_mnist
	AUTONORM_DATA_ROOT=$(DATA) $(PY) train.py -m sweep=dg paths.output_root=$(OUT) $(if $(DG_NORMS),+dg=$(DG_NORMS)) $(DG_ARGS)
	$(PY) scripts/collect_results.py collect $(OUT)/dg/fast_mnist docs/results/dg

## the CIFAR-10 table at the recipe's budget (experiment=fast_cifar10): every row x 3 seeds; finished
## runs kept in docs/results/recipe (a re-run continues where it stopped)
table-recipe: install
	$(PY) scripts/collect_results.py restore docs/results/recipe $(OUT)/table/recipe
	AUTONORM_DATA_ROOT=$(DATA) $(PY) train.py -m sweep=table_recipe paths.output_root=$(OUT) $(if $(ROWS),experiment=$(ROWS)) $(RECIPE_ARGS)
	$(PY) scripts/collect_results.py collect $(OUT)/table/recipe docs/results/recipe

bench: install
	$(PY) scripts/bench.py

## unused imports and names, undefined names (pyflakes) over the code, scripts and tests
lint: install
	$(PY) -m pyflakes src scripts tests train.py eval.py

clean:
	rm -rf outputs .pytest_cache
