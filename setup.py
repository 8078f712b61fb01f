"""qpopper-py: Qpopper, the classic UNIX POP3 server, in Python."""
import re
from pathlib import Path

from setuptools import find_packages, setup

# Read the version without importing the package (its dependencies may not be installed yet).
__version__ = re.search(r'__version__ = "([^"]+)"',
                        Path(__file__).with_name("qpopper").joinpath("__init__.py").read_text()).group(1)

setup(
    name="qpopper-py",
    version=__version__,
    description="Qpopper POP3 server rebuilt in Python",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=find_packages(include=["qpopper", "qpopper.*"]),
    install_requires=[
        "python-daemon",
        "setproctitle",
        "python-pam",
        "pyOpenSSL",
        "lockfile",
        # tls.py reads certificates (expiry, key match) with it directly; pyOpenSSL already
        # depends on it, so this only states what we import (Debian: python3-cryptography).
        "cryptography",
    ],
    extras_require={
        # -k / -K (Kerberos as SASL GSSAPI); builds against libkrb5-dev, or use Debian's
        # python3-gssapi with the system Python.
        "kerberos": ["gssapi"],
    },
    entry_points={
        "console_scripts": [
            "popper = qpopper.cli:popper_main",
            "popauth = qpopper.tools.popauth:main",
            "poppassd = qpopper.tools.poppassd:main",
        ],
    },
)
