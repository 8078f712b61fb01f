# qpopper-py: the two commands the README promises.
#   make run   - the demo server on 127.0.0.1:8110 (no root needed)
#   make test  - the whole test suite (installs what it needs; as root also Debian packages)

PYTHON    ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# Debian packages the tests use as real peers (curl, socat, ...) or to build the packages.
DEB_TEST_PACKAGES := curl socat iproute2 openssl procps strace passwd login libpam-modules liblockfile-bin procmail
PIP_TEST_PACKAGES := pytest pytest-timeout

.PHONY: run test venv debs clean

$(STAMP): setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e . $(PIP_TEST_PACKAGES)
	touch $@

venv: $(STAMP)

# Debian packages are installed only when root and only when something is missing.
debs:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(DEB_TEST_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else echo "not root: Debian test packages not installed; tests that need them skip"; fi

run: $(STAMP)
	$(VENV)/bin/popper --demo

test: $(STAMP) debs
	$(VPY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-data
