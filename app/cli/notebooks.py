"""``python -m app notebooks --repo OWNER/NAME``: point both Colab notebooks
(their REPO_URL field and "Open in Colab" badges) and README's badges at the
project's GitHub repository."""
from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.common import CLIError
from app.notebook.repo import set_repository

ROOT = Path(__file__).resolve().parent.parent.parent


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("notebooks", help="point the Colab notebooks and README's badges at a GitHub repository")
    p.add_argument("--repo", required=True, help="the GitHub repository, OWNER/NAME")
    p.add_argument("--branch", default="main", help="the branch the Colab badges open (default: main)")
    p.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        changed = set_repository(args.root, args.repo, args.branch)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    for path in changed:
        print(f"updated {path}")
    if not changed:
        print("already up to date")
    return 0
