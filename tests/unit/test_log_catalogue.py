"""popper(8)'s DIAGNOSTICS list (qpopper/logcatalogue.py) names every log line the code can
write: each log text in qpopper/ — the string or f-string given to a log call with a syslog
priority, a PopError's `log=` text, what a `*_line(...) -> str` formatter returns (log.py's
Stats and Timing lines, the brakes' LOGIN FAILED line) — matches one of its patterns,
and each pattern matches some text of the code (no entry for a line that no longer exists)."""

from __future__ import annotations

import ast
import fnmatch


from qpopper import logcatalogue
from tests.helpers.repo import REPO

PACKAGE = REPO / "qpopper"
LOG_FUNCTION_NAMES = {"log", "warn", "_log", "logger"}
MIN_LITERAL_CHARS = 6
"""A pattern must say something: at least this many characters that are not wildcards."""


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level NAME = "text" assignments (log texts kept as constants)."""
    out = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            out[node.targets[0].id] = node.value.value
    return out


def _templates(node: ast.AST, constants: dict[str, str]) -> list[str]:
    """The texts an expression can be, with `*` for every value filled in; [] when it is not
    a text we can read (a variable passed through)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value.replace("*", "\\*")]
    if isinstance(node, ast.JoinedStr):
        parts = [[""]]
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append([value.value])
            else:
                parts.append(["*"])
        return ["".join(p[0] for p in parts)]
    if isinstance(node, ast.IfExp):
        return _templates(node.body, constants) + _templates(node.orelse, constants)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [a + b for a in _templates(node.left, constants) or ["*"]
                for b in _templates(node.right, constants) or ["*"]]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format" and isinstance(node.func.value, ast.Name)
            and node.func.value.id in constants):
        import re
        return [re.sub(r"\{[^}]*\}", "*", constants[node.func.value.id])]
    return []


def _is_priority(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr.startswith("LOG_")
            and isinstance(node.value, ast.Name) and node.value.id == "syslog")


def log_texts() -> dict[str, list[str]]:
    """template -> where it is written (file:line)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("logcatalogue.py", "docgen.py"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        constants = _constants(tree)
        where = f"{path.relative_to(PACKAGE.parent)}"
        for node in ast.walk(tree):
            texts = []
            if isinstance(node, ast.Call):
                args = node.args
                for index, arg in enumerate(args[:-1]):
                    if _is_priority(arg):
                        texts += _templates(args[index + 1], constants)
                for keyword in node.keywords:
                    if keyword.arg == "log":
                        texts += _templates(keyword.value, constants)
            elif (isinstance(node, ast.FunctionDef) and node.name.endswith("_line")
                  and isinstance(node.returns, ast.Name) and node.returns.id == "str"):
                # the formatters of log lines (log.py's stats_line, brakes' failure line)
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and ret.value is not None:
                        texts += _templates(ret.value, constants)
            for text in texts:
                found.setdefault(text, []).append(f"{where}:{node.lineno}")
    return found


def _literal_chars(pattern: str) -> int:
    return len(pattern.replace("*", ""))


def _matches(text: str, pattern: str) -> bool:
    # fnmatch's [ ] classes would read "[AUTH]" as a class: escape them
    escaped = pattern.replace("[", "[[]")
    if _literal_chars(pattern) < MIN_LITERAL_CHARS:
        return text == pattern            # a short pattern stands for one text only
    return fnmatch.fnmatchcase(text, escaped)


def test_the_code_has_log_texts_to_check():
    texts = log_texts()
    assert len(texts) > 100
    assert "LOGIN FAILED, user=*, method=*, ip=[*], failures=*, brake=*s" in texts
    assert "EOF from * without QUIT" in texts


def test_every_log_text_of_the_code_is_in_the_diagnostics_list():
    missing = [f"{places[0]}: {text}" for text, places in log_texts().items()
               if not any(_matches(text, line.pattern) for line in logcatalogue.ALL)]
    assert missing == [], "add these to qpopper/logcatalogue.py:\n" + "\n".join(missing)


def test_every_entry_of_the_list_is_a_line_the_code_writes():
    texts = log_texts()
    stale = [line.pattern for line in logcatalogue.ALL if not line.from_option
             and not any(_matches(text, line.pattern) for text in texts)]
    assert stale == []


def test_popper_8_lists_every_entry():
    from tests.helpers.manpages import rendered
    import re
    text = re.sub(r"\s+", " ", rendered(PACKAGE.parent / "man/popper.8"))
    assert "DIAGNOSTICS" in text and "LOGGING" in text
    for line in logcatalogue.ALL:
        assert re.sub(r"\s+", " ", line.pattern) in text, line.pattern


if __name__ == "__main__":
    for text, places in sorted(log_texts().items(), key=lambda kv: kv[1][0]):
        print(f"{places[0]:40} {text}")
