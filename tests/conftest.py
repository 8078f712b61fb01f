"""Fixtures shared by every test module, and the layer markers.

tests/unit/ (pure, `make test-fast`), tests/integration/ (real sockets and processes) and
tests/system/ (root: users, PAM, packages): each test gets its directory's marker, so
`pytest -m unit` and `pytest tests/unit` select the same tests.
Root-only fixtures skip the test (with the reason) when not running as root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import pam_service as _pam
from tests.helpers import sysusers as _users


LAYERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        layer = Path(str(item.fspath)).resolve().relative_to(tests_dir).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, "
                                    f"tests/integration or tests/system")
        item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session", autouse=True)
def prelogin_account(request):
    """As root, the account the pre-login processes of every server a test starts run as
    (the harness passes --prelogin-user): made once for the run, removed at its end. A run
    of tests/unit alone starts no server and makes none: `make test` runs that tier in
    several pytest-xdist workers, each a session of its own."""
    pure = all(item.get_closest_marker("unit") for item in request.session.items)
    if not _users.is_root() or pure:
        yield None
        return
    with _users.prelogin_account() as name:
        yield name


@pytest.fixture
def system_users():
    """A factory of real `qpt*` users: `system_users.create(password=..., locked=True, ...)`;
    every user made is removed (userdel -r) when the test ends, even on failure."""
    if not _users.is_root():
        pytest.skip("needs root: creates real system users with useradd")
    with _users.SystemUsers() as users:
        yield users


@pytest.fixture
def pam_service():
    """The name of a test PAM service in /etc/pam.d: pam_unix with `nodelay` (fast failures)."""
    if not _users.is_root():
        pytest.skip("needs root: installs a PAM service file in /etc/pam.d")
    with _pam.installed_pam_service(_pam.FAST_UNIX) as name:
        yield name


@pytest.fixture
def stock_pam_service():
    """The name of a test PAM service with the shipped /etc/pam.d/pop3 stack
    (@include common-auth / common-account): real, but each failure costs ~2.2 s."""
    if not _users.is_root():
        pytest.skip("needs root: installs a PAM service file in /etc/pam.d")
    with _pam.installed_pam_service(_pam.STOCK_POP3, tag="stock-") as name:
        yield name


@pytest.fixture
def world_tmp():
    """A 0755 temp directory under /tmp (reachable by children that dropped privileges)."""
    with _users.world_readable_tmpdir() as path:
        yield path
