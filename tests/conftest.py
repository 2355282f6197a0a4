"""Make the repository importable as ``ansible_collections.virtfleet.compute`` for pytest.

The collection's plugins import each other by their fully qualified path, as Ansible requires. Tests run from a
plain checkout, so a throw-away ``ansible_collections/virtfleet/compute`` symlink to the checkout is put on
``sys.path`` before any test module is imported.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collection_root():
    # build/ lives inside the checkout and is ignored by git and by ansible-galaxy.
    base = os.path.join(REPO_ROOT, "build", "collections")
    link = os.path.join(base, "ansible_collections", "virtfleet", "compute")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        # Link under a unique temporary name, then rename: concurrent test processes never see a half-made link.
        tmp = "%s.%d" % (link, os.getpid())
        os.symlink(REPO_ROOT, tmp)
        os.replace(tmp, link)
    return base


COLLECTIONS_PATH = _collection_root()
if COLLECTIONS_PATH not in sys.path:
    sys.path.insert(0, COLLECTIONS_PATH)
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", COLLECTIONS_PATH)

try:
    from hypothesis import settings as _hypothesis_settings

    # In CI the property tests draw the same examples every run, so a result is reproducible and a failure is
    # never a matter of luck; locally they keep exploring new examples each run.
    _hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        _hypothesis_settings.load_profile("ci")
except ImportError:  # hypothesis is only needed by the unit tests that use it
    pass
