"""The docs cannot rot silently: every relative link and anchor in README, CONTRIBUTING and docs/
resolves, and every ``evalkit ...`` command they show parses against the real command line (its
command exists, its options exist and their values convert), without running anything."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.S | re.M)
SHELL = ("", "bash", "sh", "shell", "console", "yaml", "yml")  # code blocks whose lines are commands
INLINE = re.compile(r"`(evalkit [^`]+)`")
COMMAND = re.compile(r"(?:^|\s|run:\s|&&\s|-m\s)(evalkit\s.*)$")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def _links():
    for page in PAGES:
        for match in LINK.finditer(FENCE.sub("", page.read_text())):
            target = match.group(1)
            if not re.match(r"[a-z]+:", target):
                yield page, target


PLACEHOLDER = re.compile(r"^([A-Z][A-Z_]*|<[^>]+>|\.\.\.)$")


def _commands():
    """(page, command, whole): lines of code blocks are whole command lines; an inline span may
    name just a command (`evalkit plot`) or stop at a placeholder (`evalkit run NAME`)."""
    for page in PAGES:
        text = page.read_text()
        blocks = [block.replace("\\\n", " ") for lang, block in FENCE.findall(text) if lang.strip() in SHELL]
        lines = [line for block in blocks for line in block.splitlines()]
        for line in lines:
            if match := COMMAND.search(line):
                yield page, match.group(1), True
        for command in INLINE.findall(FENCE.sub("", text)):
            yield page, command, False


def _words(command: str) -> list[str]:
    """The command's words, without a trailing comment or what a shell adds after it."""
    words = shlex.split(command, comments=True)
    for i, word in enumerate(words):
        if word in ("|", ">>", ">", "&&", ";", "||", "2>&1"):
            return words[:i]
    return words


def test_pages_exist():
    assert all(page.is_file() for page in PAGES)
    assert len(PAGES) >= 10


@pytest.mark.parametrize("page,target", list(_links()), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.exists(), f"{page.name}: {target} does not exist"
    if anchor:
        assert file.suffix == ".md" and anchor in _anchors(file), f"{page.name}: no heading #{anchor} in {file.name}"


def test_the_link_checker_sees_a_broken_anchor(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n## Two words\n")
    assert _anchors(page) == {"title", "two-words"}


def test_docs_show_commands():
    assert sum(whole for _, _, whole in _commands()) >= 60


def _problem(command: str, whole: bool) -> str | None:
    """Why ``command`` does not parse against evalkit's command line, or None when it does."""
    import typer.main

    import cli

    words = _words(command)
    if words[:1] != ["evalkit"]:
        return "does not start with evalkit"
    if not whole:  # a mention in prose: up to its first placeholder, and it may name a group or a command alone
        cut = next((i for i, w in enumerate(words) if PLACEHOLDER.match(w)), len(words))
        words = words[: cut - 1] if cut < len(words) and words[cut - 1].startswith("--") else words[:cut]
    node = typer.main.get_command(cli.register_tasks())
    path, args = ["evalkit"], words[1:]
    while hasattr(node, "get_command"):  # a group: walk down to the command
        if args == ["--help"] or (path == ["evalkit"] and args == ["--version"]):
            return None
        if not args:
            return None if not whole else f"names no command under {' '.join(path)}"
        ctx = node.make_context(" ".join(path), [], resilient_parsing=True)
        child = node.get_command(ctx, args[0])
        if child is None:
            return f"no command {args[0]!r} under {' '.join(path)}"
        node, path, args = child, [*path, args[0]], args[1:]
    if args == ["--help"] or (not args and not whole):
        return None
    try:
        node.make_context(" ".join(path), list(args))
    except Exception as exc:  # click's UsageError, NoSuchOption, BadParameter, MissingParameter
        return f"does not parse: {exc}"
    return None


@pytest.mark.parametrize(
    "page,command,whole", list(_commands()), ids=lambda v: str(v).replace(str(ROOT) + "/", "")[:90]
)
def test_command_parses(page, command, whole):
    problem = _problem(command, whole)
    assert problem is None, f"{page.name}: `{command}` {problem}"


def test_the_command_checker_refuses_what_would_not_run():
    assert _problem("evalkit run needle --model ckpt/ --trials 5", True) is None
    assert "no such option" in _problem("evalkit run needle --model ckpt/ --trails 5", True).lower()
    assert "no command" in _problem("evalkit rn needle", True)
    assert "integer" in _problem("evalkit run needle --digits five", True)
    assert "missing" in _problem("evalkit export", True).lower()
    assert _problem("evalkit export", False) is None  # a mention of the command in prose
