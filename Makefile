# Godwit: two commands set everything up on a fresh Debian machine with Python 3.11.
#   make demo   an appliance with three registered sample servers, shown in the console
#               (make demo TARGET=azure: replicating into Azurite, a local Azure Blob Storage emulator)
#   make test   the whole suite, headless (what CI runs)
#   make appliance        (root) the appliance: build/godwit-appliance.qcow2, .ova, the two .deb packages and the
#                         mobility bundle
#   make appliance-test   (root) the packages on clean Debian 11/12 roots, then the qcow2 booted under QEMU with a
#                         sample disk replicated into it

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.godwit-installed
DEMO   := .demo

.PHONY: all deps test lint demo demo-stop screenshots clean appliance appliance-test mobility-bundle

all: test

$(STAMP): pyproject.toml installers/debian-packages.sh tools/azurite/package-lock.json
	bash installers/debian-packages.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@command -v npm >/dev/null || { echo "npm is missing: install Node.js 18 or 20 with npm (Azurite, the Azure Blob emulator, runs on it)" >&2; exit 1; }
	npm ci --prefix tools/azurite --no-audit --no-fund --silent
	touch $(STAMP)

deps: $(STAMP)

lint: deps
	$(VENV)/bin/ruff check engine app tests benchmarks tools
	$(VENV)/bin/mypy

test: lint
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest

demo: deps
	$(PY) tools/demo.py --dir $(DEMO) --target $(or $(TARGET),local)

# Every page, wizard step and main dialog, against a real demo, at 1280x800 and 1920x1080 (docs/screenshots).
# Then the licence banner at 30 and 3 days, a port move, and each state of the Agents page (tools/screenshots.py).
screenshots: deps
	xvfb-run -a -s "-screen 0 1920x1080x24 -nolisten tcp" $(PY) tools/console_tour.py
	xvfb-run -a -s "-screen 0 1920x1080x24 -nolisten tcp" $(PY) tools/screenshots.py
	xvfb-run -a -s "-screen 0 1920x1080x24 -nolisten tcp" $(PY) tools/screenshots.py --agents

# The self-contained mobility bundle (its own CPython 3.11, built in a Debian 11 root) and godwit-mobility .deb.
mobility-bundle:
	bash installers/debian-packages.sh appliance
	bash installers/mobility/build_bundle.sh --deb

# The appliance image from this checkout, as root (installers/appliance/build.py; caches in build/cache). It carries
# the mobility bundle, which it serves to source servers.
appliance: mobility-bundle
	python3 installers/appliance/build.py

# Not part of `make test` (minutes; needs what `make appliance` built). KVM when /dev/kvm works, else TCG.
appliance-test: deps
	bash installers/debian-packages.sh appliance
	bash installers/mobility/test_bundle.sh
	python3 installers/appliance/package_test.py
	$(PY) installers/appliance/boot_test.py

demo-stop:
	@if [ -x $(PY) ]; then $(PY) tools/demo.py --dir $(DEMO) --stop; fi

clean: demo-stop
	rm -rf $(VENV) $(DEMO) .demo-screenshots .pytest_cache .mypy_cache .ruff_cache *.egg-info
