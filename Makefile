# virtfleet.compute — the two commands a newcomer needs:
#   make demo   install everything, build a Debian cloud image, converge the one-host cloud, log into a server
#   make test   every test suite (lint, sanity, unit, integration on a real libvirtd); CI runs exactly this
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PYTHON ?= python3
BIN := $(VENV)/bin
COLLECTIONS := $(CURDIR)/build/collections
LINK := $(COLLECTIONS)/ansible_collections/virtfleet/compute
IMAGE ?= /var/cache/virtfleet/debian-12.qcow2
# ansible-test ignores files below a directory named build, so its copy of the collection lives elsewhere.
SANITY_DIR ?= /tmp/virtfleet-sanity
SANITY_ARGS = --python $(shell $(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) --color no
SYSTEM_PACKAGES := libvirt-daemon-system libvirt-clients libvirt-dev pkg-config gcc python3-dev python3-venv \
	qemu-system-x86 qemu-utils dnsmasq-base openssh-client iproute2 rsync shellcheck \
	mmdebstrap extlinux syslinux-common fdisk e2fsprogs python3-apt genisoimage
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS)
export PATH := $(BIN):$(PATH)
export VIRTFLEET_IMAGE := $(IMAGE)

.PHONY: demo test deps system-deps venv nova-venv link libvirtd image lint sanity units integration bench lab lab-down \
	clean plan converge drain evacuate action

demo: deps libvirtd image
	ansible-playbook playbooks/site.yml
	@echo "To run the playbooks yourself: . .venv/bin/activate (then ansible-playbook ...), or make plan / converge"

# The workflows, with the virtualenv's Ansible (docs/first-cloud.md). INVENTORY=inventory/lab for the lab.
INVENTORY ?= inventory/local
CHECK_ARGS = $(if $(CHECK),--check --diff)

plan: link
	ansible-playbook -i $(INVENTORY) playbooks/site.yml --check --diff

converge: link
	ansible-playbook -i $(INVENTORY) playbooks/site.yml $(CHECK_ARGS)

drain: link
	@test -n "$(HOST)" || { echo "make drain HOST=<compute host> [CHECK=1]"; exit 2; }
	ansible-playbook -i $(INVENTORY) playbooks/drain_host.yml -e drain_host=$(HOST) $(CHECK_ARGS)

evacuate: link
	@test -n "$(HOST)" || { echo "make evacuate HOST=<compute host that is down> [PHASE=cleanup]"; exit 2; }
	ansible-playbook -i $(INVENTORY) playbooks/evacuate_host.yml -e evacuate_host=$(HOST) \
		-e evacuate_phase=$(or $(PHASE),evacuate) $(CHECK_ARGS)

action: link
	@test -n "$(SERVER)" -a -n "$(ACTION)" || { echo "make action SERVER=<name> ACTION=<action> [ARGS='-e ...']"; exit 2; }
	ansible-playbook -i $(INVENTORY) playbooks/server_action.yml -e server_action_server=$(SERVER) \
		-e server_action=$(ACTION) $(ARGS) $(CHECK_ARGS)

test: deps libvirtd image
	$(MAKE) lint docs-test sanity units matrix integration molecule

deps: system-deps venv link

# Debian/Ubuntu packages; installed only when one is missing (needs root).
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

# Nova's own scheduler code, in a virtualenv of its own, for the scheduler's differential test (about 75 s once).
NOVA_VENV ?= $(CURDIR)/build/nova-venv
NOVA_REQUIREMENTS := tests/unit/plugins/module_utils/_scheduler/nova-requirements.txt
export VIRTFLEET_NOVA_VENV := $(NOVA_VENV)

nova-venv: $(NOVA_VENV)/.installed

$(NOVA_VENV)/.installed: $(NOVA_REQUIREMENTS)
	test -x $(NOVA_VENV)/bin/python || $(PYTHON) -m venv $(NOVA_VENV)
	$(NOVA_VENV)/bin/pip install -q -r $(NOVA_REQUIREMENTS)
	touch $@

link:
	@mkdir -p $(dir $(LINK))
	@ln -sfn $(CURDIR) $(LINK)

libvirtd:
	scripts/ensure-libvirtd.sh

# The Debian cloud image the demo and the boot tests use; built once per machine from the Debian mirror.
image: link
	test -f $(IMAGE) || ansible-playbook playbooks/build_image.yml -e image_builder_output=$(IMAGE)

lint: link
	ruff check .
	yamllint -s .
	ansible-lint --profile production playbooks roles inventory tests/integration/targets
	antsibull-changelog lint

# ansible-test wants the collection at ansible_collections/<ns>/<name> as a real directory: test a copy.
sanity: link
	@# ansible-test bootstraps pip in its venvs with a script from a host these machines cannot reach: give it ours.
	@# ansible-core 2.16 names one pip version per Python version: a copy for each.
	@mkdir -p ~/.ansible/test/cache && for pipver in $$(grep -o "pip='[0-9.]*'" $$(python -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py | tr -dc '0-9.\n' | tr . _); do \
		cp scripts/ansible-test-get-pip.py ~/.ansible/test/cache/get_pip_$$pipver.py; done
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)/ansible_collections/virtfleet
	rsync -a --exclude .git --exclude .ansible --exclude build --exclude .venv --exclude '.*cache' --exclude '__pycache__' \
		--exclude .hypothesis ./ $(SANITY_DIR)/ansible_collections/virtfleet/compute/
	@# Priming the test venvs (pip removing itself at the end) now and then fails on an import race: retry it.
	cd $(SANITY_DIR)/ansible_collections/virtfleet/compute && \
	for attempt in 1 2 3; do ansible-test sanity --prime-venvs $(SANITY_ARGS) >/dev/null 2>&1 && break; \
		echo "priming ansible-test venvs failed (attempt $$attempt), retrying"; rm -rf ~/.ansible/test/venv; done; \
	ansible-test sanity $(SANITY_ARGS)

units: link nova-venv
	python -m pytest -q tests/unit

# --durations: the slowest tests in CI's log, to see where the suite's time goes.
integration: link libvirtd
	python -m pytest -q --durations=25 tests/integration

bench: link libvirtd
	python bench/bench_scheduler.py
	python bench/bench_host_info.py
	python bench/bench_inventory.py

# The multi-host lab: LAB_HOSTS libvirt "compute hosts" on this machine (tests/lab/lab.py), used by inventory/lab.
#   make lab; make converge INVENTORY=inventory/lab; make lab-down
#   python tests/lab/lab.py crash lab-2 / revive lab-2: a host dies and comes back (docs/maintenance.md)
LAB_DIR ?= /var/tmp/virtfleet-lab/lab
LAB_HOSTS ?= 3

lab: deps libvirtd
	python tests/lab/lab.py up --dir $(LAB_DIR) --hosts $(LAB_HOSTS)

lab-down: venv
	python tests/lab/lab.py down --dir $(LAB_DIR)

clean:
	rm -rf build .pytest_cache .hypothesis

# -- the Ansible ecosystem (issue 20): molecule, the docs site, the version matrix, releases -------------------------
.PHONY: ecosystem-deps molecule docs docs-test matrix matrix-core release

# Debian packages of the targets below, installed only when missing: sshd for molecule's compute host, Chromium and
# its WebDriver for the docs site's browser test.
ECOSYSTEM_PACKAGES := openssh-server chromium chromium-driver

ecosystem-deps:
	@$(MAKE) -s system-deps SYSTEM_PACKAGES="$(ECOSYSTEM_PACKAGES)"

# `molecule test` in each role (roles/*/molecule/default): converge, idempotence, verify. compute_node runs over SSH
# on a private libvirtd in a network namespace; image_builder builds a small image and boots it to a login prompt.
MOLECULE_ROLES ?= compute_node image_builder

molecule: ecosystem-deps link libvirtd
	set -e; for role in $(MOLECULE_ROLES); do (cd roles/$$role && molecule test); done

# The documentation site (docs/site/build.py): antsibull-docs from the plugin docs, the guides of docs/, Sphinx with
# warnings as errors, every link checked. docs-test looks at it in headless Chromium (screenshots in build/docs/).
docs: link
	python docs/site/build.py

docs-test: ecosystem-deps docs
	python -m pytest -q -p no:cacheprovider tests/docs

# The version matrix: unit tests and sanity with the oldest ansible-core meta/runtime.yml promises, in a virtualenv
# of its own (the newest, 2.19 on this Python, is the one in $(VENV) that `make units sanity` use). `make matrix
# MATRIX_CORES="2.16 2.19"` runs both in their own virtualenvs.
MATRIX_DIR ?= /var/tmp/virtfleet-matrix
MATRIX_CORES ?= $(shell sed -n 's/^requires_ansible: *">=\([0-9]*\.[0-9]*\).*/\1/p' meta/runtime.yml)

matrix: link
	@test -n "$(MATRIX_CORES)" || { echo "no ansible-core floor in meta/runtime.yml"; exit 2; }
	set -e; for core in $(MATRIX_CORES); do $(MAKE) matrix-core CORE=$$core; done

matrix-core:
	test -x $(MATRIX_DIR)/core-$(CORE)/bin/python || $(PYTHON) -m venv $(MATRIX_DIR)/core-$(CORE)
	$(MATRIX_DIR)/core-$(CORE)/bin/pip install -q -r requirements-matrix.txt "ansible-core==$(CORE).*"
	@echo "== ansible-core $$($(MATRIX_DIR)/core-$(CORE)/bin/python -c 'import ansible; print(ansible.__version__)')"
	$(MAKE) units sanity VENV=$(MATRIX_DIR)/core-$(CORE) SANITY_DIR=$(MATRIX_DIR)/sanity-$(CORE)

# A release (docs/development.md, "Releases"): on a clean checkout of main after a green `make test`,
#   make release VERSION=x.y.z [RELEASE_SUMMARY="one paragraph"]
# sets the version in galaxy.yml, turns the changelog fragments into CHANGELOG.rst (antsibull-changelog), builds the
# collection tarball into build/, commits "Release x.y.z" and tags it x.y.z. Pushing is left to you.
release: link
	@echo "$(VERSION)" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+$$' || { echo "usage: make release VERSION=x.y.z"; exit 2; }
	@test -z "$$(git status --porcelain)" || { echo "release: the checkout has uncommitted or untracked files"; exit 2; }
	@! git rev-parse -q --verify "refs/tags/$(VERSION)" >/dev/null || { echo "release: tag $(VERSION) exists"; exit 2; }
	@current=$$(sed -n 's/^version: *//p' galaxy.yml); \
	if [ "$$current" != "$(VERSION)" ] && [ "$$(printf '%s\n%s\n' "$$current" "$(VERSION)" | sort -V | tail -n 1)" != "$(VERSION)" ]; then \
		echo "release: $(VERSION) is older than galaxy.yml's $$current"; exit 2; fi
	antsibull-changelog lint
	@if [ -n "$(RELEASE_SUMMARY)" ]; then printf -- '---\nrelease_summary: |\n  %s\n' "$(RELEASE_SUMMARY)" \
		> changelogs/fragments/$(VERSION).yml; fi
	sed -i 's/^version: .*/version: $(VERSION)/' galaxy.yml
	antsibull-changelog release --version $(VERSION)
	ansible-galaxy collection build --force --output-path build/
	git add -A galaxy.yml CHANGELOG.rst changelogs
	git commit -q -m "Release $(VERSION)"
	git tag -a $(VERSION) -m "virtfleet.compute $(VERSION)"
	@echo "released $(VERSION): build/virtfleet-compute-$(VERSION).tar.gz; push with: git push origin HEAD $(VERSION)"
