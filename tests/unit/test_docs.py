"""The docs match the tree: every repository path a README (or a module's docstring) names in
backticks exists. Paths that git ignores are what a run writes (``build/``,
``perf/results/``, the built models) and are not checked."""

from __future__ import annotations

import re
import subprocess

from python_backend.paths import ROOT

#: A backticked token that may be a path: no spaces, no globs or placeholders.
TOKEN = re.compile(r"`([\w.\-/]+)`")


def _tracked(pattern: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", pattern], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def _ignored(paths: list[str]) -> set[str]:
    """The ``paths`` git ignores, as files or as folders (a folder's pattern, ``results/``,
    matches only a path named as one when the folder is not there yet)."""
    if not paths:
        return set()
    asked = [*paths, *(f"{p}/" for p in paths)]
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", *asked], cwd=ROOT, capture_output=True, text=True
    )
    return {p.rstrip("/") for p in out.stdout.split()}


def named_paths(text: str) -> set[str]:
    """The tokens of ``text`` that name a repository path: they contain a slash and their
    first part is a top-level file or folder of the repository."""
    found = set()
    for token in TOKEN.findall(text):
        token = token.rstrip(".,:;")
        if "/" not in token or token.startswith(("/", ".", "-")):
            continue
        if (ROOT / token.split("/")[0]).exists():
            found.add(token.rstrip("/"))
    return found


def test_named_paths_finds_repository_paths_only() -> None:
    text = "see `client/demo.py`, `http://x/y`, `a b/c`, `nosuchtop/x.py`, `-m client` and `tests/`"
    assert named_paths(text) == {"client/demo.py", "tests"}


def test_every_path_a_readme_or_docstring_names_exists() -> None:
    docs = _tracked("*.md") + _tracked("*.py")
    missing = []
    for doc in docs:
        named = sorted(p for p in named_paths((ROOT / doc).read_text()) if not (ROOT / p).exists())
        missing += [f"{doc}: {p}" for p in sorted(set(named) - _ignored(named))]
    assert not missing, "paths named in the docs that are not in the tree:\n" + "\n".join(missing)
