# corridor: the two entry points a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# System tools corridor and its tests use are checked by `sysdeps` (command:package);
# only the missing ones are installed, so a Node.js from another source is kept.

.PHONY: setup sysdeps venv test test-fast lint demo clean bench

setup: sysdeps venv

sysdeps:
	@missing=""; \
	for t in bwrap:bubblewrap nft:nftables ip:iproute2 setpriv:util-linux curl:curl git:git \
	         node:nodejs npm:npm; do \
	  cmd=$${t%%:*}; pkg=$${t##*:}; \
	  PATH="$$PATH:/usr/sbin:/sbin" command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "corridor needs:$$missing -- run: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

lint: venv
	$(BIN)/ruff check src tests bench

# The whole suite, slow fuzzing included (`-m "slow or not slow"` selects every test;
# a plain `pytest` skips the slow ones).
test: setup
	$(BIN)/ruff check src tests
	$(BIN)/pytest -m "slow or not slow"

test-fast: venv
	$(BIN)/pytest -m "not lab and not slow"

demo: setup
	@bash scripts/demo.sh

# The benchmark side by side with squid, tinyproxy, mitmproxy, bwrap, srt and codex (root:
# it builds its own network namespace; installs its peers on first use). About 12 minutes;
# BENCH_QUICK=1 for one short round. Writes bench/results.{json,md,png}.
bench: setup
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
