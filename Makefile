# qpopper-py: the two commands the README promises.
#   make run   - the demo server on 127.0.0.1:8110 (no root needed)
#   make test  - the whole test suite (installs what it needs; as root also Debian packages:
#                the build tools of `make debs` and the test peers of `make test-peers`)
#   make fuzz  - each fuzz target for FUZZ_SECONDS (default 60) under atheris (docs/fuzzing.md);
#                FUZZ_TARGETS="pop3 sasl" picks some
#   make bench - by hand, as root: bench/vs_peers.py (bench/README.md); BENCH=privsep_cost
#                (or vs_reference, tls_retr, session_memory, retr_cpu) runs another of bench/, BENCH_ARGS="..." passes options

PYTHON    ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
# Debian packages that build the .deb and the RPM (`make debs`, then `make package`): only
# build tools, nothing a mail host would not want. build-essential and python3-all-dev compile
# the C accelerators (docs/accelerators.md) for the packages and for the venv.
DEB_BUILD_PACKAGES := debhelper dh-python build-essential python3-all python3-all-dev python3-setuptools \
	python3-pytest python3-pytest-timeout \
	python3-cryptography python3-daemon python3-lockfile python3-openssl python3-pampy python3-setproctitle \
	man-db lintian rpm rpmlint
# Debian packages the tests use as real peers (curl, socat, a Kerberos KDC, a C compiler, ...):
# `make test-peers`, which `make test` runs; never part of `make debs`.
DEB_TEST_PACKAGES := curl socat iproute2 openssl procps strace passwd login libpam-modules liblockfile-bin procmail \
	ssl-cert adduser systemd python3-gdbm \
	krb5-kdc krb5-admin-server libkrb5-dev gcc mpop fail2ban python3-systemd fetchmail e2fsprogs quota \
	haproxy nfs-ganesha nfs-ganesha-vfs libnfs13
PIP_TEST_PACKAGES := pytest pytest-timeout pytest-xdist atheris pyflakes
# Waits for another apt/dpkg run instead of failing.
APT_GET := apt-get -o DPkg::Lock::Timeout=600

.PHONY: run test test-fast venv debs test-peers clean package bench fuzz

# The C accelerators: `pip install -e .` builds them in place (optional: skipped without a
# compiler), so a changed .c file makes the venv again.
ACCEL_SOURCES := $(wildcard qpopper/*.c qpopper/*/*.c)

$(STAMP): setup.py pyproject.toml Makefile $(ACCEL_SOURCES)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e . $(PIP_TEST_PACKAGES)
	touch $@

venv: $(STAMP)

# Debian packages are installed only when root and only when something is missing.
define install_missing
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    $(APT_GET) update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(APT_GET) install -y -qq --no-install-recommends $$missing; \
	  fi; \
	else echo "not root: $(2) not installed"; fi
endef

debs:
	$(call install_missing,$(DEB_BUILD_PACKAGES),the build tools (make package needs them))

test-peers:
	$(call install_missing,$(DEB_TEST_PACKAGES),the test peers (tests that need them skip))

run: $(STAMP)
	$(VENV)/bin/popper --demo

# The venv only after the Debian packages, also under make -j: its build of the C
# accelerators needs their compiler and headers.
test: debs test-peers
	@$(MAKE) --no-print-directory $(STAMP)
	@# python-gssapi (optional: -k/-K) builds against libkrb5-dev, so only after `test-peers`. As
	@# root everything the GSSAPI tests need can be installed, so a failure stops the run.
	@$(VPY) -c "import gssapi" 2>/dev/null || $(VPY) -m pip install --quiet gssapi \
	  || if [ "$$(id -u)" = 0 ]; then echo "pip install gssapi failed: the GSSAPI tests need it"; exit 1; \
	     else echo "python-gssapi not installed: the GSSAPI tests skip (not root)"; fi
	@# The pure layer in one worker per core (its tests share nothing), then the rest in one
	@# process: the system tier's timing tests must not share the cores with other tests.
	@# Both run whatever the first says; the status fails if either failed.
	status=0; \
	  $(VPY) -m pytest -n auto tests/unit || status=1; \
	  $(VPY) -m pytest tests/integration tests/system || status=1; \
	  exit $$status

# The pure layer (tests/unit): the protocol by byte scripts and single-process module tests;
# no root, no Debian packages, under a minute.
test-fast: $(STAMP)
	$(VPY) -m pytest -n auto tests/unit -q

# Every target in turn; new corpus entries go to .fuzz-work/<target>, findings to
# fuzz-findings/. Fails when any target found something.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: $(STAMP)
	@failed=""; for t in $${FUZZ_TARGETS:-$$($(VPY) -m fuzz.run --list)}; do \
	  echo "== fuzz $$t ($(FUZZ_SECONDS) s)"; \
	  $(VPY) -m fuzz.run $$t --seconds $(FUZZ_SECONDS) || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz findings in:$$failed (see fuzz-findings/)"; exit 1; fi

BENCH      ?= vs_peers
BENCH_ARGS ?=
bench: $(STAMP)
	$(VPY) bench/$(BENCH).py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache demo-data .fuzz-work fuzz-findings
	find qpopper -name '*.so' -delete

# The Debian and RPM packages, built and linted in a temporary copy of the tree (nothing is
# left in the checkout); the .deb (with its -dbgsym .deb of the C accelerators' debug symbols),
# the .changes and the .rpm land in $(PKG_OUT).
# pyenv (or any other python3) is kept off PATH: pybuild and rpmbuild must use Debian's.
PKG_OUT  ?= dist
SYS_PATH := /usr/sbin:/usr/bin:/sbin:/bin
package:
	@set -e; out=$$(realpath -m "$(PKG_OUT)"); mkdir -p "$$out"; \
	work=$$(mktemp -d /tmp/qpopper-package.XXXXXX); trap 'rm -rf "$$work"' EXIT; \
	mkdir "$$work/src"; \
	if [ -d .git ]; then git ls-files -z --cached --others --exclude-standard \
	  | xargs -0 sh -c 'for f; do [ -e "$$f" ] && printf "%s\0" "$$f"; done' sh \
	  | tar --null -T - -cf - | tar -C "$$work/src" -xf -; \
	else tar --exclude=./.venv --exclude=./dist -cf - . | tar -C "$$work/src" -xf -; fi; \
	echo "== dpkg-buildpackage"; \
	(cd "$$work/src" && env PATH=$(SYS_PATH) dpkg-buildpackage -us -uc -b); \
	echo "== lintian"; \
	lintian --info --fail-on error "$$work"/qpopper-py_*.changes; \
	echo "== rpmbuild"; \
	(cd "$$work/src" && env PATH=$(SYS_PATH) rpmbuild -bb --nodeps --build-in-place \
	  --define "_topdir $$work/rpmtop" rpm/qpopper.spec); \
	echo "== rpmlint"; \
	rpmlint -r "$$work/src/rpm/rpmlint-ci.rc" "$$work/src/rpm/qpopper.spec" "$$work"/rpmtop/RPMS/*/*.rpm; \
	cp "$$work"/qpopper-py*.deb "$$work"/qpopper-py_*.changes "$$work"/rpmtop/RPMS/*/*.rpm "$$out"/; \
	echo "== packages in $$out:"; ls -1 "$$out"
