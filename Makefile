# The commands the README shows: `make run` and `make test`.
# `make install` is idempotent: it installs only what is missing.

VENV        ?= .venv
PYTHON      ?= python3
DEB_PACKAGES = clang-16 llvm-16 libbpf-dev libbpf1 bpftool make
TEST_DEB_PACKAGES = nginx-light curl wrk iproute2 util-linux procps
STAMP       := $(VENV)/.installed
PROBE_SRCS  := $(wildcard probes/*.bpf.c probes/*.h probes/Makefile)

.PHONY: install deps test-deps probes run test bench clean

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

$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

run: install
	$(VENV)/bin/beyla-sidecar run

test: install test-deps
	$(VENV)/bin/pytest

bench: install test-deps
	$(VENV)/bin/python -m benchmarks.run

clean:
	$(MAKE) -C probes clean
	rm -rf $(VENV) build *.egg-info
