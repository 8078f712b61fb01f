"""qpopper-py: Qpopper, the classic UNIX POP3 server, in Python."""
import re
from pathlib import Path

from setuptools import Extension, find_packages, setup

# Optional C accelerators (docs/accelerators.md, "Building"): each has a pure-Python
# fallback, so a build without a compiler or Python.h still installs a working server
# (optional=True). Compiler flags come from the environment (CFLAGS: Debian's
# dpkg-buildflags, the RPM's optflags); these only turn the warnings on.
WARNINGS = ["-Wall", "-Wextra"]
ACCELERATORS = [
    Extension("qpopper.spool._wire", ["qpopper/spool/_wire.c"], extra_compile_args=WARNINGS,
              optional=True),
    Extension("qpopper.spool._scan", ["qpopper/spool/_scan.c"], extra_compile_args=WARNINGS,
              optional=True),
]

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
    ext_modules=ACCELERATORS,
    install_requires=[
        "python-daemon",
        "setproctitle",
        # auth/pam.py hooks its PamAuthenticator's per-instance libpam bindings (2.0.2, as
        # Debian ships it, to 2.1); a login is refused if a version calls libpam otherwise.
        "python-pam>=2.0,<3",
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
