"""The local account a Kerberos principal names: krb5's own mapping, auth_to_local.

GSSAPI proves a principal (`JSmith@EXAMPLE.COM`); which account that is, is the Kerberos
administrator's decision, written in krb5.conf ([realms] REALM auth_to_local and
auth_to_local_names; without them, the DEFAULT rule maps a one-component principal of a local
realm, the default realm, to that component). MIT krb5's krb5_aname_to_localname applies it,
as sshd and every other Kerberos server do (docs/compatibility.md, "SASL and Kerberos").

python-gssapi 1.x has no binding for gss_localname, so this calls libkrb5 (which
python-gssapi's libgssapi_krb5 is linked against: no new dependency) through ctypes. It runs
where the GSS-API context lives: the monitor (docs/privsep.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

LIBRARIES = ("libkrb5.so.3", "libkrb5.so.26")
"""MIT krb5 (Debian libkrb5-3), then Heimdal's, then whatever find_library names."""

LOCAL_NAME_MAX = 256
"""Longer than any account name (spool.paths.check_user_name's limit is shorter)."""

KRB5_LNAME_NOTRANS = -1765328208
KRB5_NO_LOCALNAME = -1765328227
"""krb5_aname_to_localname: no auth_to_local rule (nor DEFAULT) maps the principal (MIT
returns the first, krb5.h's second is the older code with the same meaning)."""
KRB5_CONFIG_NOTENUFSPACE = -1765328247
"""The local name would be longer than LOCAL_NAME_MAX."""


class NoLocalName(Exception):
    """The principal names no local account; the text says why (for the log)."""


def _library_names():
    """The sonames, then (only when none loaded) what find_library names: it runs
    /sbin/ldconfig -p, a fork, in the root authentication process."""
    yield from LIBRARIES
    found = ctypes.util.find_library("krb5")
    if found:
        yield found


@functools.cache
def library() -> ctypes.CDLL:
    """libkrb5, loaded once, with the prototypes used here. OSError when there is none (not
    cached: the next login tries again)."""
    errors = []
    for name in _library_names():
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        _declare(lib)
        return lib
    raise OSError("no Kerberos 5 library (libkrb5): " + "; ".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    pointer, out = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
    for name, args, result in (
            ("krb5_init_context", (out,), ctypes.c_int32),
            ("krb5_free_context", (pointer,), None),
            ("krb5_parse_name", (pointer, ctypes.c_char_p, out), ctypes.c_int32),
            ("krb5_free_principal", (pointer, pointer), None),
            ("krb5_aname_to_localname", (pointer, pointer, ctypes.c_int, ctypes.c_char_p),
             ctypes.c_int32),
            ("krb5_get_error_message", (pointer, ctypes.c_int32), pointer),
            ("krb5_free_error_message", (pointer, pointer), None)):
        function = getattr(lib, name)
        function.argtypes, function.restype = args, result


def local_name(principal: str) -> str:
    """The account `principal` maps to under krb5.conf's auth_to_local rules (read now, from
    KRB5_CONFIG or /etc/krb5.conf). NoLocalName when none does or krb5 cannot say."""
    if _holds_nul(principal):
        raise NoLocalName("its name holds a NUL, where krb5's local name would end")
    try:
        lib = library()
    except OSError as exc:
        raise NoLocalName(str(exc)) from None
    context = ctypes.c_void_p()
    code = lib.krb5_init_context(ctypes.byref(context))
    if code:
        raise NoLocalName(f"krb5_init_context failed ({code})")
    parsed = ctypes.c_void_p()
    try:
        code = lib.krb5_parse_name(context, principal.encode("utf-8", "surrogateescape"),
                                   ctypes.byref(parsed))
        if code:
            raise NoLocalName(f"not a principal name: {_error_text(lib, context, code)}")
        buffer = ctypes.create_string_buffer(LOCAL_NAME_MAX + 1)
        code = lib.krb5_aname_to_localname(context, parsed, LOCAL_NAME_MAX, buffer)
        if code in (KRB5_LNAME_NOTRANS, KRB5_NO_LOCALNAME):
            raise NoLocalName("no auth_to_local rule in krb5.conf maps it to a local name")
        if code == KRB5_CONFIG_NOTENUFSPACE:
            raise NoLocalName(f"its local name is longer than {LOCAL_NAME_MAX} octets")
        if code:
            raise NoLocalName(f"auth_to_local failed: {_error_text(lib, context, code)}")
        if not buffer.value:
            raise NoLocalName("auth_to_local maps it to an empty name")
        return buffer.value.decode("utf-8", "surrogateescape")
    finally:
        if parsed:
            lib.krb5_free_principal(context, parsed)
        lib.krb5_free_context(context)


def _holds_nul(principal: str) -> bool:
    """Whether the principal krb5_parse_name makes of `principal` holds a NUL (written `\\0`,
    or a NUL itself, where the C string passed would end). krb5_aname_to_localname returns a
    C string: `alice\\0x@REALM` would be the account `alice`."""
    if "\0" in principal:
        return True
    escaped = False
    for char in principal:
        if escaped and char == "0":
            return True
        escaped = not escaped and char == "\\"
    return False


def _error_text(lib: ctypes.CDLL, context, code: int) -> str:
    message = lib.krb5_get_error_message(context, code)
    if not message:
        return f"error {code}"
    try:
        return ctypes.string_at(message).decode("utf-8", "replace")
    finally:
        lib.krb5_free_error_message(context, message)
