"""CAPA (RFC 2449): Qpopper's capability list, in Qpopper's order
(docs/compatibility.md, "CAPA").

Differences from Qpopper 4.1, each on purpose:
- STLS is listed only before TLS is active and only in AUTHORIZATION (RFC 2595 §4):
  Qpopper kept listing it inside TLS.
- USER is left out while clear-text-password refuses clear text on this connection (never;
  tls before TLS), and USER itself is then refused (auth_state.py): RFC 2595 §2.3 asks
  servers not to take plaintext logins they would refuse.
- SASL lists the AUTH mechanisms this connection may use now (auth/sasl.py: the sasl-*
  options, clear-text-password, TLS, the pop.auth store and store-mechanisms, -k), in
  AUTHORIZATION only. The SCRAM-*-PLUS (channel binding) names appear only inside TLS, so a
  client re-reading CAPA after STLS (RFC 2595 §4) sees them then.
- PIPELINING is listed. Qpopper had it commented out although its buffered reader coped; our
  reader handles any number of commands per packet, in order, and tests prove it
  (tests/test_protocol_pipelining.py), which is what RFC 2449 §6.6 asks before advertising it.
- X-MANGLE and X-MACRO appear only once the mangling feature plugs in (Extensions.mangle and
  an MDEF verb): a capability is never announced before it works.
"""

from __future__ import annotations

import email.utils
from typing import TYPE_CHECKING

from qpopper import QPOPPER_VERSION
from qpopper.auth import sasl
from qpopper.pop3.responses import ok

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.pop3.protocol import Protocol

CAPABILITY_LIST_FOLLOWS = "Capability list follows"


def capabilities(proto: "Protocol") -> list[str]:
    cfg, env, ext = proto.cfg, proto.env, proto.extensions
    in_transaction = proto.state == "TRANSACTION"
    lines = ["TOP"]
    if ext.sasl_mechanisms:
        mechanisms = list(ext.sasl_mechanisms(proto))
    elif not in_transaction:
        mechanisms = sasl.offered_mechanisms(cfg, env)
    else:
        mechanisms = []             # AUTH is an AUTHORIZATION-state command
    if mechanisms:
        lines.append("SASL " + " ".join(mechanisms))
    if offers_user_pass(cfg, env.tls_active):
        lines.append("USER")
    if cfg.announce_login_delay >= 0:
        lines.append(f"LOGIN-DELAY {cfg.announce_login_delay}")
    lines.append(f"EXPIRE {cfg.announce_expire}" if cfg.announce_expire >= 0 else "EXPIRE NEVER")
    lines += ["UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    if ext.mangle is not None:
        lines.append("X-MANGLE")
    if "MDEF" in ext.transaction_verbs:
        lines.append("X-MACRO")
    lines.append("X-LOCALTIME " + email.utils.formatdate(proto.now(), localtime=True))
    if env.start_tls is not None and not env.tls_active and not in_transaction:
        lines.append("STLS")
    if in_transaction or not cfg.shy:
        lines.append(f"IMPLEMENTATION Qpopper-version-{QPOPPER_VERSION}")
    return lines


def offers_user_pass(cfg, tls_active: bool) -> bool:
    return sasl.plaintext_policy_allows(cfg, tls_active)


def cmd_capa(proto: "Protocol", args: list[str]) -> None:
    proto.reply_lines(ok(CAPABILITY_LIST_FOLLOWS),
                      (line.encode("ascii") for line in capabilities(proto)))
