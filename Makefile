# npsfuse build, test and benchmark entry points. Every target installs what
# it needs on a fresh machine (Go and Python 3.10+ must exist).

ROOT       := $(abspath .)
VENV       := $(ROOT)/.venv
PYTHON     ?= $(VENV)/bin/python
TOOLS      := $(ROOT)/.tools/bin
GOPY       := $(TOOLS)/gopy
STATICCHECK_VERSION := v0.8.2
NATIVE     := python/npsfuse/_native
export PATH := $(TOOLS):$(VENV)/bin:$(PATH)
# The kernels' vector loops (gocore/vec) use Go's simd/archsimd, which needs
# this experiment; without it they build as plain Go with the same results.
export GOEXPERIMENT := simd

GO_SOURCES := $(shell find gocore arrowio pybind daemon -name '*.go' -not -name '*_test.go' 2>/dev/null) go.mod go.sum

.PHONY: all venv tools build install test test-go test-py lint demo bench clean fuzz chaos experiment bench-cli

all: build

## venv: the Python environment under .venv (torch, numpy, pyarrow, ...)
## installed with uv: its cache holds one unpacked copy of each wheel and every
## venv (this one, wheel-smoke's) hard-links to it. torch with its CUDA wheels
## is ~5.5 GB installed; pip kept a second, compressed copy in its cache and a
## third in wheel-smoke's venv, and a CI machine ran out of disk.
UV_VERSION := 0.13.9
UV         := $(VENV)/bin/uv
export UV_LINK_MODE := hardlink
venv: $(VENV)/.stamp
$(VENV)/.stamp: requirements-dev.txt requirements-experiment.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-cache-dir uv==$(UV_VERSION)
	$(UV) pip install -q --python $(VENV)/bin/python --upgrade pip
	$(UV) pip install -q --python $(VENV)/bin/python -r requirements-dev.txt
	$(UV) pip install -q --python $(VENV)/bin/python --no-deps -r requirements-experiment.txt
	touch $@

## tools: gopy (with an x/tools that compiles on current Go), goimports, staticcheck
tools: $(GOPY) $(TOOLS)/staticcheck
$(GOPY): tools/go.mod tools/go.sum tools/tools.go
	cd tools && GOBIN=$(TOOLS) go install github.com/go-python/gopy golang.org/x/tools/cmd/goimports
$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## build: the gopy extension, copied into python/npsfuse/_native
build: $(NATIVE)/.stamp
$(NATIVE)/.stamp: $(GO_SOURCES) $(GOPY)
	@$(PYTHON) -c "import pybindgen" 2>/dev/null || $(MAKE) venv
	rm -rf _build/gopy
	$(GOPY) build -output=_build/gopy -vm=$(PYTHON) -name=gonps ./pybind
	mkdir -p $(NATIVE) && rm -f $(NATIVE)/*.so $(NATIVE)/go.py $(NATIVE)/pybind.py $(NATIVE)/npsfused
	cp _build/gopy/__init__.py _build/gopy/go.py _build/gopy/pybind.py _build/gopy/_gonps*.so $(NATIVE)/
	go build -trimpath -o $(NATIVE)/npsfused ./daemon/cmd/npsfused
	touch $@

## install: pip install . into the venv (the path users take)
install: venv tools
	NPSFUSE_SKIP_GO_BUILD= $(VENV)/bin/pip install -q --no-build-isolation --no-deps --force-reinstall .

## test: everything CI runs: lint, Go tests, the installed package's Python tests
test: lint test-go install test-py

test-go:
	go test -race -timeout 30m ./...
	# the merge kernels' large bit-for-bit matrices run a third of their cases under
	# -race (sampleCase): every case in the SIMD build here, and in the plain build below
	go test ./gocore/merge
	GOEXPERIMENT= go test ./gocore/...
	# the streaming merge once more with every eligible input read by O_DIRECT
	NPSFUSE_TEST_DIRECT=always go test -race ./arrowio/stream

test-py: venv
	cd tests && $(VENV)/bin/python -m pytest -q -p no:cacheprovider

## lint: gofmt, go vet, staticcheck, ruff
lint: venv tools
	@out=$$(gofmt -l gocore arrowio pybind daemon 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	GOEXPERIMENT= go vet ./gocore/...
	$(TOOLS)/staticcheck ./...
	$(VENV)/bin/ruff check python tests $(wildcard bench)

## fuzz: every Go fuzz target for FUZZTIME (20s) each, at least MIN_EXECS (1000) inputs
## each; the table goes to bench/results/fuzz.md
fuzz:
	tools/fuzz.sh

## chaos: fault injection against the real daemon and CLI (kill -9, disk full, bad inputs,
## vanishing clients) for CHAOS_SECONDS (120), invariants checked after every case
CHAOS_SECONDS ?= 120
chaos: install
	cd tests && CHAOS_SECONDS=$(CHAOS_SECONDS) $(VENV)/bin/python chaos.py

## demo: a tiny base model and three fine-tunes merged by every method (checked against the
## NumPy reference), then the short study on MiniLM fine-tunes (experiments/run.py --demo)
demo: install
	$(VENV)/bin/python -m npsfuse.demo
	$(VENV)/bin/python experiments/run.py --demo

## experiment: the papers' comparisons on MiniLM fine-tunes (results in experiments/results/)
experiment: install
	$(VENV)/bin/python experiments/run.py

## bench: benchmarks; figures go to bench/results/
bench: install
	$(VENV)/bin/python bench/bench_bridge.py
	$(VENV)/bin/python bench/bench_merge.py
	$(VENV)/bin/python bench/bench_merge_limits.py
	$(VENV)/bin/python bench/bench_merge_limits.py --tensor-len 26214400 --name merge_limits_issue_shape
	$(VENV)/bin/python bench/bench_stream_memory.py
	$(VENV)/bin/python bench/bench_nps.py
	$(VENV)/bin/python bench/bench_cma.py
	$(VENV)/bin/python bench/bench_evolve.py
	$(VENV)/bin/python bench/bench_evolve_spiking.py
	$(VENV)/bin/python bench/bench_daemon.py
	$(VENV)/bin/python bench/bench_simd.py
	$(VENV)/bin/python bench/bench_rsvd.py
	$(VENV)/bin/python bench/bench_ray.py

## bench-cli: npsfuse merge vs mergekit-yaml on a generated 1.1B-parameter model, then
## npsfuse's direct reading against the mapping on it (bench_direct_read.py)
## (≈ 20 GB disk, ≈ 30 min; mergekit is pip-installed into bench/work/mergekit-venv on first use)
bench-cli: build
	$(PYTHON) bench/bench_cli.py --keep
	$(PYTHON) bench/bench_direct_read.py

## wheel: the manylinux2014 platform wheel in dist/ (extension + npsfused, repaired by
## auditwheel; no Go needed to install it); ARCH=aarch64 cross-builds it with Zig
ARCH ?= x86_64
.PHONY: wheel wheel-smoke
wheel: venv tools $(VENV)/.wheel-stamp
	PYTHON=$(PYTHON) TOOLS_PYTHON=$(VENV)/bin/python GOPY=$(GOPY) tools/wheel_build.sh $(ARCH)
$(VENV)/.wheel-stamp: requirements-wheel.txt
	$(UV) pip install -q --python $(VENV)/bin/python -r requirements-wheel.txt
	touch $@

## wheel-smoke: installs dist/'s wheel in a fresh venv without Go and runs the quick start
wheel-smoke: venv
	PYTHON=$(PYTHON) UV=$(UV) tools/wheel_smoke.sh

## wheel-check-aarch64: the aarch64 wheel's extension and daemon under qemu (Debian's arm64
## CPython 3.11), merging like the x86_64 wheel (needs root for apt; both wheels in dist/)
.PHONY: wheel-check-aarch64
wheel-check-aarch64:
	PYTHON=$(PYTHON) tools/wheel_aarch64_check.sh

clean:
	rm -rf _build build $(NATIVE) *.egg-info
