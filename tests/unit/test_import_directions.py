"""The import directions of docs/design.md ("Layers"), checked on the source with `ast`.

    cli → server.master/monitor → server.session/prelogin → pop3 → (spool, auth, bulletins)
        → services (log, server.privsep, server.tls) → config → options/pop3.responses → limits

Rules:
1. Every module has a layer (LAYERS below, lowest first). A module may import modules of its
   own layer and of lower layers, never of a higher one. Imports under `if TYPE_CHECKING:` are
   type hints, not dependencies, and are exempt from this rule only.
2. A module inside a package listed in LAYERS (qpopper/spool/*, qpopper/auth/*, ...) has the
   package's layer. A top-level module nobody listed yet (someone just added it) is placed in
   the "domain" layer with spool and auth: it may use the foundation, and protocol and above may
   use it. If it needs more, add it to LAYERS with the layer it belongs to.
3. The protocol layer is pure logic: it imports no socket, os, subprocess, ... (PROTOCOL_BANNED).
4. Nothing imports cli (the console scripts call it).
5. Only privsep.py changes user or group ids (PRIVILEGE_CALLS, as calls or `from os import`).
"""

import ast
from pathlib import Path

import pytest
from tests.helpers.repo import REPO

PACKAGE_DIR = REPO / "qpopper"

# Lowest first. Names are module names without the "qpopper." prefix; "pkg.*" is every module
# of a package (and the package itself). Every name must exist (test_every_layer_name_exists).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("", "limits", "addresses", "files")),          # "" is qpopper/__init__.py
    ("vocabulary", ("pop3.responses", "option_types", "options", "logcatalogue")),
    ("configuration", ("config",)),
    ("services", ("log", "server.sdnotify", "server.privsep", "server.prelogin_filter",
                  "server.tls", "server.tls_channel", "server.monitor_wire", "server.channel",
                  "server.children", "docgen")),
    ("domain", ("spool.*", "auth.*", "bulletins", "bulletin_records", "extensions.submit", "server.drac",
                "server.preflight",
                "server.reverse_lookup")),
    # extensions/ holds verbs and hooks plugged into the state machine (XTND, MDEF, X-MANGLE):
    # protocol code, pure like it. The one OS action they need, running the MTA for XTND XMIT,
    # is extensions.submit (domain layer), which the session builds and hands in.
    ("protocol", ("pop3.*", "extensions", "extensions.*")),
    ("session", ("server.session", "server.prelogin", "server.reply_writer",
                 "server.user_options")),
    ("master", ("server.master", "server.admission", "server.master_lifecycle", "server.monitor",
                "server.monitor_auth",
                "server.warmup",
                "server.monitor_proxy", "server.monitor_handover", "server.auth_cache", "server")),
    ("programs", ("demo", "tools.*")),
    ("entry points", ("cli",)),
)
DEFAULT_LAYER = "domain"
PROTOCOL_LAYER = "protocol"

PROTOCOL_BANNED = {"socket", "os", "subprocess", "select", "selectors", "signal", "ssl",
                   "OpenSSL", "fcntl", "pwd", "grp", "threading", "multiprocessing", "shutil",
                   "qpopper.server.privsep", "qpopper.server.session", "qpopper.server.master", "qpopper.server.tls",
                   "qpopper.cli", "qpopper.demo"}

PRIVILEGE_CALLS = {"setuid", "setgid", "setgroups", "initgroups", "setresuid", "setresgid",
                   "seteuid", "setegid", "setreuid", "setregid"}
PRIVSEP = "qpopper.server.privsep"
CLI_IMPORTERS: set[str] = set()


def module_name(path: Path) -> str:
    parts = ("qpopper",) + path.relative_to(PACKAGE_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def layer_of(module: str) -> tuple[int, str]:
    """(rank, layer name) of a qpopper module, by the rules in the docstring."""
    short = module.removeprefix("qpopper").removeprefix(".")
    for rank, (layer, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith(".*"):
                package = pattern[:-2]
                if short == package or short.startswith(package + "."):
                    return rank, layer
            elif short == pattern:
                return rank, layer
    names = [layer for layer, _ in LAYERS]
    return names.index(DEFAULT_LAYER), DEFAULT_LAYER


def resolve(module: str, name: str) -> str:
    """`qpopper.x.y` if that is a module or package of ours, else the longest prefix that is."""
    candidate = f"{module}.{name}" if name else module
    while candidate not in MODULES and "." in candidate:
        candidate = candidate.rpartition(".")[0]
    return candidate


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, only under TYPE_CHECKING) for every import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    type_only_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                type_only_lines.update(n.lineno for n in ast.walk(inner) if hasattr(n, "lineno"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name, "") if alias.name.startswith("qpopper") else alias.name
                found.append((target, node.lineno, node.lineno in type_only_lines))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                if source.startswith("qpopper"):
                    target = resolve(source, alias.name)
                else:
                    target = source
                found.append((target, node.lineno, node.lineno in type_only_lines))
    return found


def test_every_layer_name_exists():
    """A module renamed or removed must leave LAYERS too, so the rules describe the real tree."""
    short_names = {module.removeprefix("qpopper").removeprefix(".") for module in MODULES}
    missing = [pattern for _, patterns in LAYERS for pattern in patterns
               if pattern.removesuffix(".*") not in short_names]
    assert missing == []


def test_the_rules_see_the_tree():
    assert {"qpopper.options", "qpopper.config", "qpopper.cli"} <= set(MODULES)
    assert layer_of("qpopper.spool.mbox") == layer_of("qpopper.auth.policy")
    assert layer_of("qpopper.cli")[0] > layer_of("qpopper.server.master")[0] > \
        layer_of("qpopper.server.session")[0] > layer_of("qpopper.pop3.protocol")[0] > \
        layer_of("qpopper.spool.mbox")[0] > layer_of("qpopper.config")[0] > \
        layer_of("qpopper.limits")[0]
    assert layer_of("qpopper.some_new_module")[1] == DEFAULT_LAYER
    assert resolve("qpopper", "QPOPPER_VERSION") == "qpopper"
    assert layer_of("qpopper.extensions.mangle")[1] == PROTOCOL_LAYER
    assert layer_of("qpopper.extensions.submit")[1] == DEFAULT_LAYER


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_downwards(module):
    rank, layer = layer_of(module)
    upward = []
    for target, line, type_only in imports_of(module):
        if not target.startswith("qpopper") or type_only:
            continue
        target_rank, target_layer = layer_of(target)
        if target_rank > rank:
            upward.append(f"line {line}: {target} ({target_layer} layer)")
    assert upward == [], (f"{module} ({layer} layer) imports upwards: {'; '.join(upward)}. "
                          f"See the rules in {Path(__file__).name}.")


@pytest.mark.parametrize("module", sorted(m for m in MODULES
                                          if layer_of(m)[1] == PROTOCOL_LAYER))
def test_protocol_layer_is_pure(module):
    banned = []
    for target, line, _ in imports_of(module):
        top = target.split(".")[0]
        if target in PROTOCOL_BANNED or top in PROTOCOL_BANNED:
            banned.append(f"line {line}: {target}")
    assert banned == [], f"{module} must not use the OS or the network: {'; '.join(banned)}"


def test_nothing_imports_cli():
    importers = [f"{module} line {line}" for module in MODULES
                 for target, line, _ in imports_of(module)
                 if target == "qpopper.cli" and module not in CLI_IMPORTERS]
    assert importers == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != PRIVSEP))
def test_only_privsep_changes_ids(module):
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    offences = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in PRIVILEGE_CALLS:
                offences.append(f"line {node.lineno}: {name}()")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            offences += [f"line {node.lineno}: from os import {a.name}" for a in node.names
                         if a.name in PRIVILEGE_CALLS]
    assert offences == [], f"only {PRIVSEP} may change user or group ids: {offences}"


def test_the_checks_catch_violations(tmp_path, monkeypatch):
    """The rules fail on a protocol module that opens sockets and imports session."""
    bad = tmp_path / "qpt_violation.py"
    bad.write_text("import socket\nfrom qpopper.server import session\nimport os\nos.setuid(0)\n")
    monkeypatch.setitem(MODULES, "qpopper.pop3.qpt_violation", bad)
    with pytest.raises(AssertionError, match="imports upwards: line 2: qpopper.server.session"):
        test_imports_point_downwards("qpopper.pop3.qpt_violation")
    with pytest.raises(AssertionError, match="line 1: socket; line 2: qpopper.server.session; line 3: os"):
        test_protocol_layer_is_pure("qpopper.pop3.qpt_violation")
    with pytest.raises(AssertionError, match=r"line 4: setuid\(\)"):
        test_only_privsep_changes_ids("qpopper.pop3.qpt_violation")
