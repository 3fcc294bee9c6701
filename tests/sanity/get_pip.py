"""Offline stand-in for the get-pip.py bootstrap script that ansible-test downloads.

ansible-test fetches get-pip-<version>.py from a CI file server this machine cannot reach,
then runs it inside each new sanity virtualenv with pip-install arguments. This script does
the same job from the interpreter's bundled pip (ensurepip) and PyPI: it bootstraps pip,
then installs what it was asked for. `make sanity` copies it into ansible-test's cache.
"""

import ensurepip
import os
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

env = dict(os.environ)
ensurepip.bootstrap(upgrade=True)  # sets PIP_CONFIG_FILE=/dev/null in os.environ; not for what follows
args = [a for a in sys.argv[1:] if a not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args], env=env))
