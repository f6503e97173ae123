# The index of developer tasks. `make demo` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast broker lint typecheck format sandbox ci clean bench chaos fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)  ## run the local marketplace with a demo user
	$(BIN)/flexbot demo

sandbox: $(STAMP)  ## run the local marketplace on its own (pass ARGS="--tls --port 8443")
	$(BIN)/flexbot sandbox $(ARGS)

# Tests run in parallel workers (one per core unless WORKERS says otherwise; an idle worker takes
# queued tests from a busy one: --dist worksteal) and in a random order:
# pytest prints the seed, `PYTEST_ARGS=--randomly-seed=N` repeats an order.
WORKERS ?= auto

test: $(STAMP) broker  ## the whole test suite
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the suite without the slow tests (subprocesses, long property searches)
	$(BIN)/python -m pytest -q -n $(WORKERS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

# The MQTT meter tests run a real broker: Debian's mosquitto, installed when missing. Best effort:
# without apt (or root, or password-less sudo) the install is skipped and those tests skip.
SUDO := $(shell [ "$$(id -u)" = 0 ] || ! command -v sudo >/dev/null || echo sudo -n)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto

broker:  ## install the MQTT broker the tests use (mosquitto), if missing
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto \
		|| $(APT_INSTALL) || ($(SUDO) apt-get update -q && $(APT_INSTALL)) \
		|| echo "mosquitto not installed: the MQTT meter tests will be skipped" >&2

bench: $(STAMP)  ## every benchmark with its baseline (ARGS="--quick" for a smoke run)
	$(BIN)/python bench/run_all.py $(ARGS)

fuzz: $(STAMP)  ## the fuzz searches at full size (FLEXBOT_FUZZ_SCALE=10 for a long search)
	FLEXBOT_FUZZ_SCALE=$(or $(FLEXBOT_FUZZ_SCALE),1) $(BIN)/python -m pytest -q tests/test_fuzz.py

chaos: $(STAMP)  ## the long chaos run: 15 minutes of faults and SIGKILLs (ARGS to change)
	$(BIN)/python -m bench.chaos $(or $(ARGS),--duration 900 --kills 20)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy --strict flexbot strategies

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

ci:
	bash .ci/run

clean:
	rm -rf $(VENV) build *.egg-info
