"""The README's examples are executed: its ``pycon`` blocks as doctests (one namespace, in
order), its ``console`` blocks command by command (``$ moebif ...`` run in-process, in an empty
folder, its output compared with the lines shown below it; ``...`` matches anything, spacing is
normalised). Its links to files of the repository point at files that exist, and every command
and option it names exists."""

from __future__ import annotations

import doctest
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
# other pages whose pycon examples are executed too
PAGES = [README, ROOT / "docs" / "api.md"]
# the docs pages whose commands and options are checked too
OWN_DOCS = [ROOT / "docs" / n for n in ("api.md", "architecture.md", "reproduction.md")]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _blocks(lang: str, text: str = TEXT) -> list[tuple[int, str]]:
    """``(line number, body)`` of every fenced block of language ``lang``."""
    out = []
    for m in re.finditer(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S):
        out.append((text[: m.start()].count("\n") + 2, m.group(1)))
    return out


def _commands(body: str) -> list[tuple[list[str], str]]:
    """The ``$ moebif ...`` commands of a console block with the output shown for each."""
    out, cmd, want = [], None, []
    for line in body.splitlines():
        if line.startswith("$ "):
            if cmd is not None:
                out.append((cmd, "\n".join(want)))
            cmd, want = shlex.split(line[2:]), []
        else:
            want.append(line)
    if cmd is not None:
        out.append((cmd, "\n".join(want)))
    return out


def test_readme_has_examples():
    assert len(_blocks("pycon")) >= 2 and len(_blocks("console")) >= 2


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_examples(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=FLAGS)
    globs: dict = {}
    blocks = _blocks("pycon", page.read_text())
    assert blocks, f"{page.name} has no Python example"
    for line, body in blocks:
        test = parser.get_doctest(body, globs, f"{page.name}:{line}", str(page), line)
        result = runner.run(test, clear_globs=False)
        globs = test.globs  # the next block sees this one's names
        assert result.failed == 0, f"{page.name} line {line}: a Python example's output differs"


@pytest.mark.parametrize(
    ("line", "args", "want"),
    [(line, args, want) for line, body in _blocks("console") for args, want in _commands(body)],
    ids=lambda v: v[1] if isinstance(v, list) else None,
)
def test_console_examples(line, args, want, cli, tmp_path, monkeypatch):
    assert args[0] == "moebif", f"README.md line {line}: only moebif commands are executed"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")
    r = cli(*args[1:])
    got = r.out + r.err
    checker = doctest.OutputChecker()
    assert checker.check_output(want.strip() + "\n", got.strip() + "\n", FLAGS), (
        f"README.md line {line}: `{shlex.join(args)}` printed\n{got}\ninstead of\n{want}"
    )


def test_links_point_at_files():
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", TEXT):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README.md links to a missing file: {target}"


@pytest.mark.parametrize("page", [README, *OWN_DOCS], ids=lambda p: p.name)
def test_named_commands_and_options_exist(page, cli):
    """Every ``moebif CMD --option`` written in a page is a real command and option."""
    named = re.findall(r"`moebif ([a-z][a-z-]*)([^`]*)`", page.read_text())
    assert page is not README or len(named) >= 10
    for cmd, rest in named:
        r = cli(cmd, "--help")
        assert r.code == 0, f"{page.name} names an unknown command: moebif {cmd}"
        for opt in re.findall(r"(--[a-z][a-z0-9-]*)", rest):
            assert opt in r.out, f"{page.name}: `moebif {cmd}` has no option {opt}"
