"""While the PAM stack cannot decide (a directory out of reach, a module that will not load),
popper answers an unknown name as it answers an existing one, -ERR [SYS/TEMP], not a failed
login: else the reply would tell which names exist (poppassd's test of the same case is in
tests/integration/test_poppassd.py)."""

from __future__ import annotations

import pytest

from qpopper.auth.policy import Authenticator
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from tests.helpers import pam_service as pam_files
from tests.helpers.sysusers import is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: installs a PAM service")

OUTAGE = ("auth     required  pam_exec.so quiet /bin/false\n"
          "account  required  pam_permit.so\n")
"""pam_exec failing: PAM_SYSTEM_ERR, as poppassd's test of the same case uses."""


def _code(auth: Authenticator, user: str) -> RespCode:
    with pytest.raises(PopError) as info:
        auth.check_password(user, "whatever", "127.0.0.1")
    return info.value.code


def test_an_outage_answers_an_unknown_name_as_it_answers_an_existing_one(system_users):
    known = system_users.create("ko", password="pw-known")
    with pam_files.installed_pam_service(OUTAGE, tag="ko-") as service:
        auth = Authenticator(Config.defaults().replace(
            pam_service=service, auth_failure_delay=0, pop_auth_file=None,
            auth_brakes_file=None), lambda priority, text: None)
        codes = [_code(auth, name) for name in ("qptnosuchuser", known.name)]
    assert codes == [RespCode.SYS_TEMP, RespCode.SYS_TEMP], codes
