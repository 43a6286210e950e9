"""docs/DEPLOY.md cannot drift from the repository: every path it names exists, its table of
environment variables is exactly the MNIST_LAB_* variables the code reads, every
`python -m mnist_lab ...` it shows is a real command with real flags, and every case of its
"Pick your case" table links to an English section and a Chinese one that exist."""
from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import pytest

from mnist_lab.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "DEPLOY.md"
TEXT = DOC.read_text(encoding="utf-8")

# A token in backticks is a repository path when it starts with one of these folders or is one of
# these root files; paths the reader creates (a compose .env) are not in the repository.
REPO_DIRS = {"deploy", "docs", "mnist_lab", "app_pages", "app_lib", "bench", "tests", ".streamlit"}
ROOT_FILES = {"run.py", "packages.txt", "requirements.txt", "streamlit_app.py", "pyproject.toml", "Makefile"}
MADE_BY_READER = {"deploy/docker/.env"}
# Where the code reads its settings: the app, the core, the start module and images, run.py.
CODE = ["mnist_lab", "app_lib", "app_pages", "streamlit_app.py", "deploy", "run.py"]
VAR = re.compile(r"MNIST_LAB_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_]*\*)")  # not a family: MNIST_LAB_MAX_*
CJK = re.compile(r"[\u4e00-\u9fff]")


def fenced_blocks(text: str) -> list[str]:
    return re.findall(r"^ *```[^\n]*\n(.*?)^ *```", text, flags=re.S | re.M)


def inline_spans(text: str) -> list[str]:
    """Inline code, fenced blocks left out; a span may wrap onto the next line, as Markdown allows."""
    prose = re.sub(r"^ *```[^\n]*\n.*?^ *```", "", text, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def code_lines(text: str) -> list[str]:
    """Every inline span, and every command of a fenced block (a trailing backslash joins lines)."""
    lines = list(inline_spans(text))
    for block in fenced_blocks(text):
        lines += [" ".join(line.split()) for line in block.replace("\\\n", " ").splitlines()]
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = "".join(ch for ch in heading.strip().lower()
                   if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def headings(text: str) -> dict[str, str]:
    prose = re.sub(r"^ *```[^\n]*\n.*?^ *```", "", text, flags=re.S | re.M)
    return {slug(h): h for h in re.findall(r"^#{1,6} +(.+?) *$", prose, flags=re.M)}


def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"docs/DEPLOY.md has no section '## {title}'"
    return match.group(1)


def table_rows(body: str) -> list[list[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in body.splitlines() if line.lstrip().startswith("|")]
    return [row for row in rows[2:]]  # the header and its |---| line


def test_every_path_in_backticks_exists():
    named, missing = set(), []
    for line in code_lines(TEXT):
        for token in line.split():
            token = token.strip("\"'(),;:")
            first = token.split("/")[0]
            if "*" in token or "://" in token or not (first in REPO_DIRS and "/" in token or token in ROOT_FILES):
                continue
            named.add(token)
            if token not in MADE_BY_READER and not (ROOT / token).exists():
                missing.append(token)
    assert {"run.py", "deploy/start.py", "deploy/modelscope/ms_deploy.json"} <= named  # the scan finds paths
    assert not missing, f"docs/DEPLOY.md names paths the repository lacks: {sorted(set(missing))}"


def code_variables() -> set[str]:
    found = set()
    for name in CODE:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            if file.suffix in {".md", ".pyc", ".po", ".pot", ".mo"} or "__pycache__" in file.parts:
                continue
            found |= set(VAR.findall(file.read_text(encoding="utf-8", errors="replace")))
    return found


def documented_variables() -> set[str]:
    rows = table_rows(section(TEXT, "Environment variables"))
    return {name for row in rows for name in VAR.findall(row[0])}


def test_variable_table_is_the_code_variables():
    code, table = code_variables(), documented_variables()
    assert {"MNIST_LAB_DB", "MNIST_LAB_MODE"} <= code & table  # both scans find something
    assert not code - table, f"read by the code, missing from DEPLOY.md's table: {sorted(code - table)}"
    assert not table - code, f"in DEPLOY.md's table, read nowhere in the code: {sorted(table - code)}"


def cli_commands() -> list[list[str]]:
    commands = []
    for line in code_lines(TEXT):
        for part in re.split(r"(?:&&|;|\|)", line):
            words = part.split()
            for i in range(len(words) - 2):
                if words[i].endswith("python") or words[i].endswith("python3"):
                    if words[i + 1:i + 3] == ["-m", "mnist_lab"]:
                        commands.append(shlex.split(" ".join(words[i + 3:]).split("#")[0]))
    return commands


def help_of(argv: list[str], capsys) -> str | None:
    """The help text of `python -m mnist_lab ARGV --help`, None when argparse refuses it."""
    capsys.readouterr()
    code = main([*argv, "--help"])
    out = capsys.readouterr().out
    return out if code == 0 else None


def test_every_cli_command_shown_exists(capsys):
    commands = cli_commands()
    assert len(commands) >= 5  # the doc's commands are found at all
    for words in commands:
        assert words and not words[0].startswith("-"), f"no command in `python -m mnist_lab {' '.join(words)}`"
        path, help_text = [words[0]], help_of([words[0]], capsys)
        assert help_text, f"`python -m mnist_lab {words[0]}` is not a command"
        # a sub-command (class roster, data idx) when the command lists it among its choices
        choices = re.search(r"^usage:.*?\{([\w,-]+)\}", help_text, flags=re.S | re.M)
        if len(words) > 1 and choices and words[1] in choices.group(1).split(","):
            path.append(words[1])
            help_text = help_of(path, capsys)
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
                f"`python -m mnist_lab {' '.join(path)}` has no option {flag} (docs/DEPLOY.md: {' '.join(words)})")


def pick_rows() -> list[list[str]]:
    return table_rows(section(TEXT, "Pick your case"))


@pytest.mark.parametrize("row", pick_rows(), ids=lambda row: row[0][:40])
def test_each_case_links_to_an_english_and_a_chinese_section(row):
    anchors = headings(TEXT)
    links = re.findall(r"\]\(#([^)]+)\)", " ".join(row))
    assert len(links) == 2, f"'{row[0]}' should link one English and one Chinese section: {links}"
    english, chinese = links
    assert english in anchors, f"'{row[0]}' links #{english}, which is no heading of docs/DEPLOY.md"
    assert chinese in anchors, f"'{row[0]}' links #{chinese}, which is no heading of docs/DEPLOY.md"
    assert anchors[chinese].endswith("（中文）") and CJK.search(anchors[chinese])
    assert not anchors[english].endswith("（中文）")


def test_the_old_hosted_branch_and_spaces_are_gone():
    assert "git switch -c hosted" not in TEXT and "hosted-requirements.txt" not in TEXT
    assert "Hugging Face Spaces" in section(TEXT, "Pick your case")  # said once, with why not


def test_slug_matches_github():
    assert slug("A student's laptop") == "a-students-laptop"
    assert slug("其他主机：直接运行 deploy/start.py（中文）") == "其他主机直接运行-deploystartpy中文"
