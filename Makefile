# Sudo: `make run` runs the control plane on ./var, `make test` runs the tests.
# Needs Debian 12 with a running Docker engine, as root (debootstrap builds the Hermes image).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HERMES_IMAGE ?= sudo-hermes:0.19.0
SYSTEMD_IMAGE ?= sudo-systemd:bookworm
E2E_IMAGE ?= sudo-e2e:bookworm
PI_IMAGE ?= sudo-systemd:bookworm-arm64
export HERMES_IMAGE SYSTEMD_IMAGE E2E_IMAGE PI_IMAGE

# sudo-edge's package for ARCH (default this machine's; make deb-edge ARCH=arm64: the Pi's)
NATIVE_ARCH := $(shell dpkg --print-architecture)
ARCH ?= $(NATIVE_ARCH)
EDGE_VERSION := $(shell sed -n '1s/^sudo-edge (\(.*\)).*/\1/p' edge/debian/changelog)
EDGE_SOURCES := $(shell find edge units/sudo-edge.service debian/build-debs tests/images/edgebuild -type f \
	-not -path '*/__pycache__/*' -not -path '*.egg-info/*')
PI_DEB := dist/edge/sudo-edge_$(EDGE_VERSION)_arm64.deb
DEBBUILD := docker run --rm -v $(CURDIR):/src:ro -v $(CURDIR)/dist:/out \
	-v /usr/local/share/ca-certificates:/usr/local/share/ca-certificates:ro

# make run: embedded defaults, everything under ./var
DEV_ENV := SUDO_CORE_STATE_DIR=$(CURDIR)/var SUDO_PROVISIONER_SOCKET=$(CURDIR)/var/provisioner.sock \
	SUDO_RUNTIME_IMAGE=$(HERMES_IMAGE) SUDO_API_LISTEN=127.0.0.1:8600 SUDO_API_SECURE_COOKIES=false

.PHONY: deps venv litellm-venv hermes-image systemd-image e2e-image pi-image deb deb-edge e2e run test \
	test-prerequisites lint bench reliability clean

deps:
	@missing=""; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v gcc >/dev/null || missing="$$missing gcc"; \
	pkg-config --exists libsystemd 2>/dev/null || missing="$$missing pkg-config libsystemd-dev"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	pkg-config --exists alsa 2>/dev/null || missing="$$missing libasound2-dev"; \
	command -v shellcheck >/dev/null || missing="$$missing shellcheck"; \
	command -v nft >/dev/null || missing="$$missing nftables"; \
	command -v caddy >/dev/null || missing="$$missing caddy"; \
	[ $(NATIVE_ARCH) = arm64 ] || command -v qemu-aarch64-static >/dev/null || missing="$$missing qemu-user-static binfmt-support"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	command -v docker >/dev/null || { echo "Docker is required: install docker.io and start it"; exit 1; }; \
	if [ -n "$$missing" ]; then \
		echo "==> installing$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(VENV)/.installed: pyproject.toml edge/pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[server,voice,test]' -e ./edge
	touch $@

venv: $(VENV)/.installed

# The real litellm proxy that tests/integration/test_litellm.py puts behind sudo-gateway, in a
# virtualenv of its own: it pins aiohttp, pydantic, openai... to versions that are not the project's.
LITELLM_VENV := .venv-litellm
$(LITELLM_VENV)/.installed: tests/litellm/requirements.txt | deps
	rm -rf $(LITELLM_VENV)
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q -r tests/litellm/requirements.txt
	touch $@

litellm-venv: $(LITELLM_VENV)/.installed

hermes-image: deps
	tests/images/build-image hermes $(HERMES_IMAGE)

# make deb: the .deb packages, built and lintian-checked in a clean Debian 12, into dist/
deb: deps
	tests/images/build-image debbuild sudo-debbuild:bookworm
	@mkdir -p dist
	$(DEBBUILD) sudo-debbuild:bookworm /src/debian/build-debs
	@ls -1 dist/*.deb dist/edge/*.deb 2>/dev/null || true

# make deb-edge: sudo-edge alone into dist/edge/ for ARCH, rebuilt when its sources change. Another
# architecture than this machine's is built under qemu-user-static in the edgebuild image (its
# Build-Depends on a Debian 12 debootstrapped for ARCH), and checked by the native lintian.
deb-edge: dist/edge/sudo-edge_$(EDGE_VERSION)_$(ARCH).deb

dist/edge/sudo-edge_$(EDGE_VERSION)_%.deb: $(EDGE_SOURCES) | deps
	@mkdir -p dist
	if [ $* = $(NATIVE_ARCH) ]; then \
		tests/images/build-image debbuild sudo-debbuild:bookworm \
		&& $(DEBBUILD) sudo-debbuild:bookworm /src/debian/build-debs edge; \
	else \
		tests/images/build-image edgebuild sudo-edgebuild:bookworm-$* $* \
		&& $(DEBBUILD) sudo-edgebuild:bookworm-$* /src/debian/build-debs edge --no-lintian \
		&& tests/images/build-image debbuild sudo-debbuild:bookworm \
		&& $(DEBBUILD) sudo-debbuild:bookworm lintian --fail-on error /out/edge/$(@F); \
	fi

e2e-image: deps
	tests/images/build-image e2e $(E2E_IMAGE)

# make e2e: install the built packages into a Debian 12 with systemd as PID 1 and use them; and
# the Pi's package into an arm64 one, emulated
e2e: venv $(PI_DEB) deb hermes-image e2e-image pi-image
	$(BIN)/python -m pytest -q tests/e2e

systemd-image: deps
	tests/images/build-image systemd $(SYSTEMD_IMAGE)

# The Pi's architecture under qemu-user-static: systemd as PID 1 on an arm64 Debian 12
pi-image: deps
	tests/images/build-image systemd $(PI_IMAGE) arm64

run: venv hermes-image
	@mkdir -p var
	@$(DEV_ENV) $(BIN)/sudoctl firewall apply
	@echo "==> sudo-api on http://127.0.0.1:8600, sudo-gateway and sudo-provisioner on ./var (Ctrl-C stops all)"
	@$(DEV_ENV) sh -c '$(BIN)/sudo-gateway & gateway=$$!; $(BIN)/sudo-provisioner --bind & provisioner=$$!; \
		trap "kill $$gateway $$provisioner 2>/dev/null" EXIT INT TERM; \
		$(BIN)/sudo-api'

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests/proxmox/test_shellcheck.py

# make test builds what the tests need two at a time, in this order, each as soon as a job slot
# is free: the Pi's package (emulated, about 8 minutes) and the server's, the longest, right
# after the venv; then runs the tests, and says at the end how long it all took, pass or fail.
test-prerequisites: venv $(PI_DEB) deb hermes-image systemd-image e2e-image pi-image litellm-venv lint

# The tests run on two pytest-xdist workers, a test module at a time on each (they wait on
# containers more than they compute); those marked `alone` then run one after another.
test:
	@start=$$(date +%s); status=0; \
	{ $(MAKE) -j2 test-prerequisites \
		&& { $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not alone" || status=$$?; \
			$(BIN)/python -m pytest -q -m alone; }; } || status=$$?; \
	took=$$(( $$(date +%s) - start )); \
	echo "==> make test: $$([ $$status = 0 ] && echo passed || echo FAILED) in $$((took / 60)) min $$((took % 60)) s"; \
	exit $$status

# make reliability: tests/reliability at full size (make test runs it bounded); figures in
# $SUDO_RELIABILITY_REPORT (default: /tmp/sudo-reliability.json) and at the end of the output
reliability: venv hermes-image
	SUDO_RELIABILITY=full $(BIN)/python -m pytest -q tests/reliability

bench: venv hermes-image
	@command -v wrk >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }
	$(BIN)/python tests/bench/bench_runtimes.py
	$(BIN)/python tests/bench/bench_api.py
	$(BIN)/python tests/bench/bench_voice.py
	$(BIN)/python tests/bench/bench_room.py
	$(BIN)/python tests/edge/bench_edge.py

clean:
	rm -rf $(VENV) $(LITELLM_VENV) var dist
