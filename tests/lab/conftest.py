"""pytest fixtures for tests that need several libvirt hosts: the lab of tests/lab/lab.py.

Test modules elsewhere import them (``from tests.lab.conftest import lab_factory, lab_hosts``) or use
:func:`running_lab` directly. Every lab started here is stopped by pid when its scope ends, failed tests included,
and its directory removed; a lab left behind by a killed test run is stopped by the next run that starts one, or by
hand with ``python tests/lab/lab.py down --dir DIR``.
"""
import contextlib
import os

import pytest

from tests.lab.lab import Lab, LabError, default_specs

# Labs of test runs live here (QEMU, running as libvirt-qemu, must reach their disks: not under pytest's 0700 tmp).
LAB_ROOT = os.environ.get("VIRTFLEET_LAB_ROOT", "/var/tmp/virtfleet-lab")


def lab_dir(name):
    # The pid keeps concurrent test runs apart; labs of runs that were killed are reaped before a new one starts.
    return os.path.join(LAB_ROOT, "pytest-%d-%s" % (os.getpid(), name))


@contextlib.contextmanager
def running_lab(specs, name):
    """A started lab of ``specs`` (HostSpec list, or a number of default hosts), stopped on leaving the block."""
    if isinstance(specs, int):
        specs = default_specs(specs)
    Lab.reap_stale(LAB_ROOT, "pytest-")
    lab = Lab(lab_dir(name), specs)
    try:
        lab.start()
    except LabError as exc:
        pytest.fail("cannot start the lab: %s" % exc, pytrace=False)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def lab_factory():
    """``start(specs=3, name="lab")`` starts a lab and returns it; all of them are stopped at the end of the session."""
    stack = contextlib.ExitStack()

    def start(specs=3, name="lab"):
        return stack.enter_context(running_lab(specs, name))

    with stack:
        yield start


@pytest.fixture(scope="session")
def lab_hosts(lab_factory):
    """Three lab hosts (lab-1, lab-2, lab-3 of tests/lab/lab.py's DEFAULT_SPECS) for the whole session."""
    return lab_factory(3, name="hosts")
