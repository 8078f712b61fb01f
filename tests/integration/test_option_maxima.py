"""Integer options that feed poll(), sleeps, deadlines or OpenSSL have a largest value: a larger
one is refused where it is written (file:line, argv), never left to kill sessions later with
an OverflowError (poll() takes at most 2**31 - 1 ms). The largest allowed timeout works end to
end, and a user's options file with a larger one is ignored (logged) instead of ending the
session after the login."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from qpopper import config, limits
from qpopper.options import lookup
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, login
from tests.helpers.repo import REPO

POLL_LIMIT_S = (2**31 - 1) // 1000

MAXIMA = {
    "timeout": limits.MAX_IDLE_TIMEOUT_S,
    "shutdown-grace": limits.MAX_SHUTDOWN_GRACE_S,
    "bulldb-max-tries": limits.MAX_BULLDB_TRIES,
    "announce-expire": 2**31 - 1,
    "announce-login-delay": 2**31 - 1,
    "tls-options": 2**64 - 1,
    "auth-failure-delay": 60,
    "auth-brakes-max-delay": 600,
    "login-timeout": limits.MAX_LOGIN_TIMEOUT_S,
}


def test_time_maxima_stay_inside_what_poll_takes():
    for name in ("timeout", "shutdown-grace", "auth-failure-delay", "auth-brakes-max-delay",
                 "login-timeout"):
        assert lookup(name).maximum <= POLL_LIMIT_S, name


@pytest.mark.parametrize("name,maximum", sorted(MAXIMA.items()))
def test_largest_value_is_accepted_and_one_more_refused_with_file_and_line(tmp_path, name,
                                                                            maximum):
    good = tmp_path / "good.config"
    good.write_text(f"# maxima\nset {name} = {maximum}\n")
    assert config.read_files([str(good)]).get(name) == maximum
    bad = tmp_path / "bad.config"
    bad.write_text(f"# maxima\nset {name} = {maximum + 1}\n")
    with pytest.raises(config.ConfigError) as error:
        config.read_files([str(bad)])
    assert str(error.value).startswith(f"{bad}:2: '{name}' must be between ")
    assert str(error.value).endswith(f" and {maximum}, got {maximum + 1}")


@pytest.mark.parametrize("argv,shown", [
    (["-T", "2147484"], "argv -T: 'timeout' must be between 1 and 86400, got 2147484"),
    (["--timeout", "86401"], "'timeout' must be between 1 and 86400, got 86401"),
    (["-e", "login_delay=2147483648"], "'announce-login-delay' must be between -1 and "
                                       "2147483647, got 2147483648"),
])
def test_popper_refuses_an_over_large_value_on_argv(argv, shown):
    result = subprocess.run([sys.executable, "-c", "import sys; from qpopper.cli import "
                             "popper_main; sys.exit(popper_main(sys.argv[1:]))",
                             "--check-config", *argv], capture_output=True, text=True,
                            timeout=30, cwd=REPO)
    assert result.returncode != 0
    assert shown in result.stderr and result.stderr.count("\n") == 1


def test_check_config_names_the_file_and_line(tmp_path):
    path = tmp_path / "qpopper.config"
    path.write_text("set timeout = 600\n\nset timeout = 2147484\n")
    result = subprocess.run([sys.executable, "-c", "import sys; from qpopper.cli import "
                             "popper_main; sys.exit(popper_main(sys.argv[1:]))",
                             "--check-config", "-f", str(path)], capture_output=True, text=True,
                            timeout=30, cwd=REPO)
    assert result.returncode != 0
    assert f"{path}:3: 'timeout' must be between 1 and 86400, got 2147484" in result.stderr


def fetch_one_message(site, user) -> None:
    """Log in, read the one message, QUIT: the session outlives its login."""
    make_spool(site.spool_dir, user, mbox(("hello", "body")))
    client = login(site.server(), user)
    try:
        assert client.stat()[0] == 1
        assert b"Subject: hello" in client.retr(1)[1]
        assert client.quit().startswith(b"+OK")
    finally:
        client.close()


@pytest.mark.root
@pytest.mark.timeout(60)
def test_session_with_the_largest_timeout_works(world_tmp, pam_service, system_users):
    site = Site(world_tmp, pam_service, timeout=limits.MAX_IDLE_TIMEOUT_S)
    try:
        fetch_one_message(site, system_users.create("tm"))
    finally:
        site.close()


@pytest.mark.root
@pytest.mark.timeout(60)
def test_users_over_large_timeout_is_ignored_and_the_session_goes_on(world_tmp, pam_service,
                                                                     system_users):
    site = Site(world_tmp, pam_service, user_options=True)
    try:
        user = system_users.create("tu")
        options = Path(user.home, ".qpopper-options")
        options.write_text(f"set timeout = {POLL_LIMIT_S + 1}\n")
        fetch_one_message(site, user)
        site.syslog.wait_for(rf".*{options}:1: 'timeout' must be between 1 and 86400, got "
                             rf"{POLL_LIMIT_S + 1}; options file ignored")
    finally:
        site.close()
