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

.PHONY: demo test deps system-deps venv link libvirtd image lint sanity units integration bench lab lab-down clean

demo: deps libvirtd image
	ansible-playbook playbooks/site.yml

test: deps libvirtd image
	$(MAKE) lint sanity units integration

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

# ansible-test wants the collection at ansible_collections/<ns>/<name> as a real directory: test a copy.
sanity: link
	@# ansible-test bootstraps pip in its venvs with a script from a host these machines cannot reach: give it ours.
	@pipver=$$(grep -o "pip='[0-9.]*'" $$(python -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py | tr -dc '0-9.' | tr . _); \
	mkdir -p ~/.ansible/test/cache && cp scripts/ansible-test-get-pip.py ~/.ansible/test/cache/get_pip_$$pipver.py
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)/ansible_collections/virtfleet
	rsync -a --exclude .git --exclude .ansible --exclude build --exclude .venv --exclude '.*cache' --exclude '__pycache__' \
		--exclude .hypothesis ./ $(SANITY_DIR)/ansible_collections/virtfleet/compute/
	@# Priming the test venvs (pip removing itself at the end) now and then fails on an import race: retry it.
	cd $(SANITY_DIR)/ansible_collections/virtfleet/compute && \
	for attempt in 1 2 3; do ansible-test sanity --prime-venvs $(SANITY_ARGS) >/dev/null 2>&1 && break; \
		echo "priming ansible-test venvs failed (attempt $$attempt), retrying"; rm -rf ~/.ansible/test/venv; done; \
	ansible-test sanity $(SANITY_ARGS)

units: link
	python -m pytest -q tests/unit

integration: link libvirtd
	python -m pytest -q tests/integration

bench: link libvirtd
	python bench/bench_scheduler.py
	python bench/bench_host_info.py
	python bench/bench_inventory.py

# The multi-host lab: LAB_HOSTS libvirt "compute hosts" on this machine (tests/lab/lab.py), used by inventory/lab.
#   make lab; ansible-playbook -i inventory/lab playbooks/site.yml; make lab-down
LAB_DIR ?= /var/tmp/virtfleet-lab/lab
LAB_HOSTS ?= 3

lab: deps libvirtd
	python tests/lab/lab.py up --dir $(LAB_DIR) --hosts $(LAB_HOSTS)

lab-down: venv
	python tests/lab/lab.py down --dir $(LAB_DIR)

clean:
	rm -rf build .pytest_cache .hypothesis
