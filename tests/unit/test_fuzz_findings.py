"""What the fuzz targets found (docs/fuzzing.md, "Findings"), each as the smallest input
that showed it, so that it stays fixed without the fuzzer."""

from __future__ import annotations

import base64
import io
import syslog

import pytest

from qpopper.config import ConfigError, apply_user_file, load, read_files
from qpopper.spool.mbox import copy_for_update, scan


def write(tmp_path, text: str):
    path = tmp_path / "conf"
    path.write_text(text, encoding="utf-8")
    return str(path)


# --- config: a control character in a config-file value escaped as ValueError --------------------
def test_a_control_character_in_a_chained_file_name_is_a_config_error(tmp_path):
    path = write(tmp_path, "set config-file = a\x01b\n")
    with pytest.raises(ConfigError, match=rf"^{path}:1: 'config-file' value contains a "
                                          rf"control character$"):
        read_files([path])


def test_a_control_character_in_argv_f_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^argv -f: 'config-file' value contains a control"):
        load(["-f", "a\x01b"])


@pytest.mark.parametrize("text", ["set config-file = a\x01b\n", "\x1f\n"])
def test_a_user_file_with_them_is_logged_and_ignored(tmp_path, text):
    """A user's mistake never breaks the login: before the fix, both escaped
    apply_user_file (ValueError, IndexError) and ended the session."""
    path = write(tmp_path, "set timeout = 17\n" + text)
    records = []
    from qpopper.config import Config
    base = Config.defaults()
    assert apply_user_file(base, path, "home", lambda p, t: records.append((p, t))) == base
    assert [p for p, _ in records] == [syslog.LOG_ERR]
    assert records[0][1].startswith(f"{path}:2: ")


# --- config: a line of whitespace that is not " \t" (here US, 0x1f) raised IndexError --------------
@pytest.mark.parametrize("line", ["\x1f", "\x1c\x1d", "\x0b"])
def test_a_line_of_other_whitespace_names_file_and_line(tmp_path, line):
    path = write(tmp_path, f"# ok\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        read_files([path])
    assert str(caught.value).startswith(f"{path}:2: expected 'set' or 'reset', got '\\x")


# --- config: argv errors quoted the argument raw, newlines included --------------------------------
@pytest.mark.parametrize("argv", [["-e", "x\nset shy"], ["--no\nsuch"], ["-\n"],
                                  ["-T", "1\n2"]])
def test_argv_errors_are_one_line(argv):
    with pytest.raises(ConfigError) as caught:
        load(argv)
    assert "\n" not in str(caught.value) and "\\n" in str(caught.value), str(caught.value)


def written_back(f, messages, out: io.BytesIO) -> list:
    """Append the write-back of `messages` (message 1 retrieved) to `out`; what a scan of
    all of `out` finds."""
    for msg in messages:
        copy_for_update(f, msg, out.write, retrieved=msg.number == 1, update_status_headers=True)
    return scan(io.BytesIO(out.getvalue()))


# --- mbox: an MMDF spool whose last line is the separator without its LF --------------------------
def test_write_back_of_an_mmdf_spool_ending_in_a_bare_separator_keeps_its_messages():
    spool = b"\x01\x01\x01\x01\n\x01\x01\x01\x01\n\x01\x01\x01\x01\n\x01\x01\x01\x01"
    f = io.BytesIO(spool)
    messages = scan(f)
    assert len(written_back(f, messages, io.BytesIO())) == len(messages) == 2


# --- sasl: a SCRAM client nonce outside ASCII escaped feed() as UnicodeEncodeError ------------------
def test_a_scram_nonce_outside_printable_ascii_is_a_malformed_exchange(tmp_path):
    from qpopper.auth.policy import Authenticator
    from qpopper.auth.store import PopAuthStore
    from tests.transcripts.harness import Spool
    spool = Spool(tmp_path / "spool", sasl_no_dictionary=False, user_database="pop-auth",
                  pop_auth_owner="nobody", auth_brakes_file=None)
    store = PopAuthStore.create(str(tmp_path / "pop.auth"))
    store.set_secret("alice", "tea-party-2026")
    try:
        for nonce in ("\u04d3abc", "a b", "tab\there", "\x7f"):
            auth = Authenticator(spool.cfg, lambda p, t: None, store=store)
            pop = spool.session(authenticator=auth)
            pop.greet()
            first = base64.b64encode(f"n,,n=alice,r={nonce}".encode()).decode()
            assert pop.send(f"AUTH SCRAM-SHA-256 {first}") == (
                b"-ERR [AUTH] Malformed AUTH exchange\r\n"), nonce
    finally:
        spool.close()


# --- config: every file read made a 1 MiB buffer; a long run's heap grew around them ------------
def test_reading_a_small_config_file_does_not_allocate_the_whole_size_limit(tmp_path):
    """The config target's resident set grew ~7 MB over a million inputs (docs/fuzzing.md):
    read(MAX_CONFIG_FILE_OCTETS + 1) sized a 1 MiB buffer for every file, and the heap
    fragmented around them. Now a small file costs small buffers."""
    import tracemalloc
    from qpopper import limits
    path = write(tmp_path, "set timeout = 30\n" * 20)
    read_files([path])                          # imports and caches out of the way
    tracemalloc.start()
    try:
        read_files([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limits.MAX_CONFIG_FILE_OCTETS // 4, f"peak {peak} octets for a 340-octet file"


# --- mbox: a Content-Length that was not honoured can be after the write-back -----------------------
def test_write_back_does_not_make_a_bad_content_length_swallow_the_next_message():
    spool = (b"From  Tue Nov 14 22:22 7023\nContent-Length:91\n\n"
             b"From  Tue Nov 14 22:22 702C")
    f = io.BytesIO(spool)
    messages = scan(f)
    assert len(messages) == 2                   # 91 octets are not there: not honoured
    assert len(written_back(f, messages, io.BytesIO())) == 2


# --- mbox: found after the two fixes above: junk after the last trailer stays junk ------------------
def test_write_back_of_an_empty_mmdf_message_before_a_bare_separator_keeps_the_count():
    spool = b"\x01\x01\x01\x01\n\x01\x01\x01\x01\n\x01\x01\x01\x01"
    f = io.BytesIO(spool)
    messages = scan(f)
    assert len(written_back(f, messages, io.BytesIO())) == len(messages)


# --- mbox: a cut trailer right after the blank line that ends the headers --------------------------
def test_a_cut_mmdf_trailer_after_an_empty_body_is_the_trailer():
    spool = b"\x01\x01\x01\x01\n\n\x01\x01\x01\x01"
    f = io.BytesIO(spool)
    messages = scan(f)
    assert len(messages) == 1 and messages[0].body_start == messages[0].body_end == 6
    out = io.BytesIO()
    copy_for_update(f, messages[0], out.write, retrieved=False, update_status_headers=True)
    assert len(scan(io.BytesIO(out.getvalue()))) == 1


# --- mbox: the write-back's final LF and framing line must not move the end out of the slack ------
def test_a_content_length_honoured_at_the_end_of_the_file_stays_honoured_after_write_back():
    # The fuzzer's input: Content-Length 74 honoured because it ends 24 octets before the end
    # of the file (within the slack); the write-back's LF and framing line made it 26.
    spool = b'From alihe@g Tue Nov 15 22:13:20 20%3\nContent-Length: 74\n1\n\xb3\n-Length: 1+\n\nFrom \xe8%sdnc\x1e\x1e\x1e\x1e\x1e\x1e\t\x00From alice@g Tue Nov 15 22:13:20 2023\nContent-Length:  13\n\nFrom hnsi\x1e\x1e\x1e\x1e\x1ede\n\nFr'
    f = io.BytesIO(spool)
    messages = scan(f)
    assert len(messages) == 1
    out = io.BytesIO()
    copy_for_update(f, messages[0], out.write, retrieved=True, update_status_headers=True)
    assert len(scan(io.BytesIO(out.getvalue()))) == 1


# --- mbox: without status headers a Content-Length not honoured came true after a deletion --------
def test_a_stale_content_length_does_not_swallow_the_next_kept_message():
    # The shape of fuzz/corpus/mbox_writeback/finding-stale-content-length-after-a-deletion:
    # 75 octets from the body end inside message 2 (not honoured); with message 2 deleted,
    # they end message 3's content and the length came true.
    envelope = b"From sender@example.org Wed Dec  2 05:53:22 1992\n"
    spool = (envelope + b"Content-Length: 75\n\nbody 1\n\n"
             + envelope + b"Subject: 2\n\n" + b"x" * 300 + b"\n\n"
             + envelope + b"Subject: 3\n\nbody 3\n\n" + envelope + b"Subject: 4\n\nbody 4\n\n")
    f, out = io.BytesIO(spool), io.BytesIO()
    messages = scan(f, update_status_headers=False)
    assert len(messages) == 4 and messages[0].stale_content_length
    for msg in messages[0], messages[2], messages[3]:
        copy_for_update(f, msg, out.write, retrieved=False, update_status_headers=False)
    again = scan(io.BytesIO(out.getvalue()), update_status_headers=False)
    assert [m.uid for m in again] == [messages[0].uid, messages[2].uid, messages[3].uid]


# --- mbox: headers running to the end of the file, their last line a lone CR --------------------
@pytest.mark.parametrize("retrieved", [False, True])
def test_a_status_line_goes_before_a_lone_cr_that_ends_the_headers(retrieved):
    # fuzz/corpus/mbox_writeback/finding-headers-ending-in-a-lone-cr-at-the-end's shape: a
    # CRLF delivery cut between CR and LF. RETR sends the lone CR as the empty line ending
    # the headers; the new Status line went after it, into the body.
    spool = b"From a@b Wed Dec  2 05:53:22 1992\nSubject: x\n\r"
    f, out = io.BytesIO(spool), io.BytesIO()
    [msg] = scan(f)
    copy_for_update(f, msg, out.write, retrieved=retrieved, update_status_headers=True)
    status = b"Status: RO\n" if retrieved else b"Status: U\n"
    assert out.getvalue().endswith(b"Subject: x\n" + status + b"\r\n\n")
    [again] = scan(io.BytesIO(out.getvalue()))
    assert again.uid == msg.uid and again.status_lines
