# The commands the README shows: `make run`, `make test` and `make unit`.
# `make install` is idempotent: it installs only what is missing.

VENV        ?= .venv
PYTHON      ?= python3
DEB_PACKAGES = clang-16 llvm-16 libbpf-dev libbpf1 bpftool make
TEST_DEB_PACKAGES = nginx-light curl wrk iproute2 util-linux procps prometheus openssl libssl-dev gcc libc6-dev binutils redis-server dnsmasq-base memcached mariadb-server mariadb-client postgresql
STAMP       := $(VENV)/.installed
PROBE_SRCS  := $(wildcard probes/*.bpf.c probes/*.h probes/Makefile)

.PHONY: install deps test-deps probes run test unit bench clean

install: $(STAMP) probes

# Debian packages: install only the missing ones (apt-get update first, as a fresh machine needs).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

test-deps:
	@missing=$$(for p in $(TEST_DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests: $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

probes: deps
	$(MAKE) -C probes

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

# The Prometheus endpoint (/metrics, /healthz, /readyz) on port 9400 unless BEYLA_PROMETHEUS_PORT says otherwise.
run: install
	BEYLA_PROMETHEUS_PORT=$${BEYLA_PROMETHEUS_PORT:-9400} $(VENV)/bin/beyla-sidecar run

test: install test-deps
	$(VENV)/bin/pytest

# The tests that need neither root nor BPF (no `bpf` marker), in about half a minute; installs only the venv.
unit: $(STAMP)
	$(VENV)/bin/pytest -m "not bpf"

# `make bench`: about 22 minutes; `make bench BENCH_QUICK=1` checks the harness in ~7.
# Figures go to benchmarks/results/ (latest.md, latest.json); see benchmarks/README.md.
BENCH_STAMP := $(VENV)/.bench-installed

bench: install test-deps $(BENCH_STAMP)
	BENCH_QUICK=$(BENCH_QUICK) BENCH_ONLY=$(BENCH_ONLY) $(VENV)/bin/python -m benchmarks.run

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $(BENCH_STAMP)

clean:
	$(MAKE) -C probes clean
	rm -rf $(VENV) build *.egg-info
