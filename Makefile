# Sudo: `make run` runs the control plane on ./var, `make test` runs the tests.
# Needs Debian 12 with a running Docker engine, as root (debootstrap builds the Hermes image).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HERMES_IMAGE ?= sudo-hermes:0.19.0
export HERMES_IMAGE

# make run: embedded defaults, everything under ./var
DEV_ENV := SUDO_CORE_STATE_DIR=$(CURDIR)/var SUDO_PROVISIONER_SOCKET=$(CURDIR)/var/provisioner.sock \
	SUDO_RUNTIME_IMAGE=$(HERMES_IMAGE)

.PHONY: deps venv hermes-image run test lint bench clean

deps:
	@missing=""; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v docker >/dev/null || { echo "Docker is required: install docker.io and start it"; exit 1; }; \
	if [ -n "$$missing" ]; then \
		echo "==> installing$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

hermes-image: deps
	tests/images/build-hermes-image

run: venv hermes-image
	@mkdir -p var
	@echo "==> sudo-gateway and sudo-provisioner on ./var (Ctrl-C stops both)"
	@echo "    in another terminal: export $(DEV_ENV); $(BIN)/sudoctl families add Smith (README: Trying it)"
	@$(DEV_ENV) sh -c '$(BIN)/sudo-gateway & gateway=$$!; \
		trap "kill $$gateway 2>/dev/null" EXIT INT TERM; \
		$(BIN)/sudo-provisioner --bind'

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv hermes-image lint
	$(BIN)/python -m pytest -q

bench: venv hermes-image
	$(BIN)/python tests/bench/bench_runtimes.py

clean:
	rm -rf $(VENV) var
