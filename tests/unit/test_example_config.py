"""etc/qpopper/qpopper.config is generated from the option table and must stay in step."""

import re

import pytest

from qpopper import docgen
from qpopper.config import Config, load, read_files
from qpopper.options import OPTIONS, lookup
from tests.helpers.repo import REPO

EXAMPLE = REPO / docgen.EXAMPLE_CONFIG_PATH
COMMENTED_SET = re.compile(r"^# (set \S+ = .*)$")


def test_committed_example_config_is_up_to_date():
    assert EXAMPLE.read_text() == docgen.example_config(), (
        f"{docgen.EXAMPLE_CONFIG_PATH} is out of date; regenerate it: {docgen.REGENERATE} "
        f"(or every generated file: {docgen.REGENERATE_ALL})")


def test_example_config_parses_to_the_defaults_plus_the_shipped_settings():
    cfg, invocation = load(["-f", str(EXAMPLE)])
    assert invocation.config_files == (str(EXAMPLE),)
    shipped = {lookup(s.option).name: s.value for s in docgen.SHIPPED_SETTINGS}
    for opt, value, source in cfg.items():
        if opt.name in shipped:
            assert value == opt.parse(shipped[opt.name]), opt.name
            assert source.startswith(str(EXAMPLE)), (opt.name, source)
        elif opt.name != "config-file":
            assert (value, source) == (opt.default, "default"), opt.name


# Reference §7.7 and §7.11: what the packages must ship, whatever the built-in defaults are.
PACKAGED_DECISIONS = {
    "timeout": 600,                        # RFC 1939 section 3: at least 10 minutes
    "update-on-abort": False,              # RFC 1939 section 6
    "clear-text-password": "tls",          # passwords only inside TLS
    "tls-support": "stls",                 # STLS on 110; 995 via qpopper-tls units (-l 2)
    "tls-server-cert-file": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
    "tls-private-key-file": "/etc/ssl/private/ssl-cert-snakeoil.key",
}


def test_shipped_config_carries_the_packaging_decisions():
    cfg = read_files([str(EXAMPLE)])
    for name, expected in PACKAGED_DECISIONS.items():
        assert getattr(cfg, lookup(name).attr) == expected, name
    # The built-in defaults stay Qpopper's (§7.7): only the shipped file changes them.
    defaults = Config.defaults()
    assert defaults.timeout == 120 and defaults.update_on_abort is True
    assert defaults.clear_text_password == "default"


def test_every_shipped_setting_has_its_reason_right_above_it():
    lines = EXAMPLE.read_text().splitlines()
    set_lines = [i for i, line in enumerate(lines) if line.startswith("set ")]
    assert len(set_lines) == len(docgen.SHIPPED_SETTINGS)
    for setting in docgen.SHIPPED_SETTINGS:
        i = lines.index(f"set {setting.option} = {setting.value}")
        reason_block = []
        j = i - 1
        while not lines[j].startswith("# Shipped setting:"):
            reason_block.insert(0, lines[j].removeprefix("#").strip())
            j -= 1
        reason_block.insert(0, lines[j].removeprefix("# Shipped setting:").strip())
        assert " ".join(reason_block) == setting.reason, setting.option
        assert len(setting.reason.split()) >= 8, f"{setting.option}: say why, not just what"


def test_shipped_config_does_not_turn_inetd_mode_into_a_master():
    # The same file serves qpopper.service (port on its command line) and qpopper@.service
    # (connection on stdin): a listen setting in it would break the socket-activated units.
    cfg = read_files([str(EXAMPLE)])
    assert cfg.listen == () and cfg.daemon is False


def test_every_option_is_shown_once_with_a_valid_example_line(tmp_path):
    lines = [m.group(1) for m in map(COMMENTED_SET.match, EXAMPLE.read_text().splitlines()) if m]
    shown = [line.split()[1] for line in lines]
    assert shown == [opt.name for opt in OPTIONS]
    # Uncommented, every sample line is valid (config-file would read a file; skip it).
    uncommented = tmp_path / "uncommented.config"
    uncommented.write_text("\n".join(l for l in lines if not l.startswith("set config-file"))
                           + "\n")
    cfg = read_files([str(uncommented)])
    for opt, value, _ in cfg.items():
        if opt.name == "config-file":
            continue
        expected = opt.default
        if opt.default is None or opt.default == ():
            expected = opt.combine(opt.default, opt.parse(opt.example))
        assert value == expected, opt.name


def test_the_header_explains_how_to_regenerate():
    head = EXAMPLE.read_text().splitlines()[:6]
    assert any(docgen.REGENERATE in line for line in head)


def test_shipped_settings_are_uncommented_with_their_reason(tmp_path):
    shipped = (docgen.ShippedSetting("timeout", "600", "RFC 1939 asks for at least 10 minutes."),
               docgen.ShippedSetting("update-on-abort", "false", "RFC 1939 section 6."))
    text = docgen.example_config(shipped)
    assert "# Shipped setting: RFC 1939 asks for at least 10 minutes.\nset timeout = 600\n" in text
    path = tmp_path / "shipped.config"
    path.write_text(text)
    cfg = read_files([str(path)])
    assert cfg.timeout == 600 and cfg.update_on_abort is False
    changed = {opt.name for opt, _, source in cfg.items() if source != "default"}
    assert changed == {"timeout", "update-on-abort"}


def test_shipped_settings_are_checked():
    with pytest.raises(ValueError, match="unknown option"):
        docgen.example_config((docgen.ShippedSetting("no-such", "1", "because"),))
    with pytest.raises(ValueError, match="'timeout' expects an integer"):
        docgen.example_config((docgen.ShippedSetting("timeout", "ten", "because"),))


def test_docgen_command_line(capsys):
    assert docgen.main(["example-config"]) == 0
    assert capsys.readouterr().out == EXAMPLE.read_text()
    assert docgen.main(["bogus"]) == 2
    assert "usage:" in capsys.readouterr().err
