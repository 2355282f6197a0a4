"""Stand-in for the get-pip.py bootstrap script ansible-test downloads from ci-files.testing.ansible.com.

These machines reach PyPI but not that host. ansible-test runs this file with pip's install arguments (for example
``--disable-pip-version-check pip==24.2``): bootstrap pip from the interpreter's bundled ensurepip, then let that
pip install what was asked for from PyPI, which is what the real script does with its embedded wheels.
"""
import ensurepip
import os
import subprocess
import sys

# --no-setuptools and --no-wheel are get-pip.py's own options (do not install those); pip itself does not know them.
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
config_file = os.environ.get("PIP_CONFIG_FILE")
ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null and leaves it so: restore it, or pip loses the site's index and CA.
if config_file is None:
    os.environ.pop("PIP_CONFIG_FILE", None)
else:
    os.environ["PIP_CONFIG_FILE"] = config_file
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "-q"] + args))
