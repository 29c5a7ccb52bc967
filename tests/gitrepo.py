"""A real git repository for tests of code.git: files committed on branch main."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_repo(root: Path, files: dict[str, str]) -> list[str]:
    """``files`` committed in a new repository at ``root``; the git command for more commits there."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    git = ["git", "-C", str(root), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    return git
