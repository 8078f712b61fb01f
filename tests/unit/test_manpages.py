"""man/popper.8 and man/qpopper.config.5: generated from the option table, committed, valid roff."""

import re
import shutil

import pytest

from qpopper import docgen
from qpopper.options import OPTIONS, EXPIRE_FLAG
from tests.helpers.manpages import rendered
from tests.helpers.repo import REPO

PAGES = {name: REPO / path for name, path in docgen.MAN_PAGES.items()}


@pytest.mark.parametrize("name", sorted(PAGES))
def test_committed_page_is_up_to_date(name):
    assert PAGES[name].read_text() == docgen.MAN_GENERATORS[name](), (
        f"{docgen.MAN_PAGES[name]} is out of date; regenerate every generated file with: "
        f"{docgen.REGENERATE_ALL}")


def test_generation_follows_the_option_table(monkeypatch):
    # A new option in the table must appear in the generated page: proves the option section is
    # generated, not written by hand.
    probe = OPTIONS[0].__class__("zz-probe-option", OPTIONS[0].type, 7, "Probe help text.",
                                 extension=True)
    monkeypatch.setattr(docgen, "OPTIONS", OPTIONS + (probe,))
    assert "zz\\-probe\\-option" in docgen.man_config()
    assert "zz\\-probe\\-option" in docgen.man_popper()
    assert "zz\\-probe\\-option" not in PAGES["qpopper.config"].read_text()


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) not installed")
def test_config_page_documents_every_option_and_shipped_setting():
    text = rendered(PAGES["qpopper.config"])
    for opt in OPTIONS:
        assert re.search(rf"^ {{7}}{re.escape(opt.name)}(\n| +\()", text, re.M), opt.name
        for alias in opt.aliases:
            assert alias in text, alias
    for setting in docgen.SHIPPED_SETTINGS:
        assert f"set {setting.option} = {setting.value}" in text


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) not installed")
def test_popper_page_documents_every_flag_and_extension():
    text = rendered(PAGES["popper"])
    for opt in OPTIONS:
        if opt.flag and opt.flag != EXPIRE_FLAG:
            head = opt.flag + (f" {opt.flag_arg}" if opt.flag_arg else "")
            assert re.search(rf"^ {{7}}{re.escape(head)}\b", text, re.M), opt.flag
            assert opt.name in text
        if opt.extension:
            assert f"--{opt.name}" in text, opt.name
    assert "-e login_delay=N,expire=N" in text
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "FILES",
                    "SEE ALSO"):
        assert re.search(rf"^{heading}$", text, re.M), heading


def test_roff_escaping():
    assert docgen._roff("a-b\\c") == "a\\-b\\ec"
    assert docgen._roff(".starts\n'quote") == "\\&.starts\n\\&'quote"


def test_docgen_command_line_prints_the_pages(capsys):
    for name in PAGES:
        assert docgen.main(["man", name]) == 0
        assert capsys.readouterr().out == PAGES[name].read_text()
    assert docgen.main(["man", "nope"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_regenerate_writes_every_generated_file(tmp_path):
    (tmp_path / "man").mkdir()
    (tmp_path / "etc" / "qpopper").mkdir(parents=True)
    assert docgen.regenerate(str(tmp_path)) == 0
    assert (tmp_path / docgen.EXAMPLE_CONFIG_PATH).read_text() == docgen.example_config()
    for name, path in docgen.MAN_PAGES.items():
        assert (tmp_path / path).read_text() == docgen.MAN_GENERATORS[name]()


POPAUTH_PAGE = REPO / "man/popauth.8"


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) not installed")
def test_popauth_page_documents_every_command_of_the_tool():
    from qpopper.tools import popauth
    text = rendered(POPAUTH_PAGE)
    words = set(re.findall(r"(?<![\w-])-{1,2}[a-z][a-z-]*", popauth.USAGE))
    assert {"-init", "-user", "-delete", "-list", "--import-dbm", "-f", "--file",
            "--owner"} <= words
    synopsis = text.split("DESCRIPTION", 1)[0]
    for word in words:
        assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", synopsis), word
    # Our package installs popauth in /usr/sbin: the sudoers line must name that path.
    assert 'ALL ALL=(root) /usr/sbin/popauth ""' in text
