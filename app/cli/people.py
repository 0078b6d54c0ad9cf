"""``python -m app people``: the people of an ``ACCESS = "people"`` app (app.web.people), managed
from the command line; a running server sees the changes at its next request."""
from __future__ import annotations

import argparse

from app.cli.common import CLIError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("people", help="personal links for friends (ACCESS=people): add, list, revoke, quota")
    p.add_argument("--instance", help="the app's instance folder (default: T2I_INSTANCE, else instance/ in the project)")
    p.add_argument("--url", default="", help="the app's address, to print whole links (e.g. the tunnel's https URL)")
    actions = p.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a person and print their personal link (shown once)")
    add.add_argument("name")
    add.add_argument("--quota", type=int, default=None, help="images per UTC day (default: 50)")
    actions.add_parser("list", help="everyone, with today's use")
    revoke = actions.add_parser("revoke", help="end a person's link and sessions")
    revoke.add_argument("id")
    quota = actions.add_parser("quota", help="change a person's daily quota")
    quota.add_argument("id")
    quota.add_argument("quota")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.web import instance_folder
    from app.web.people import DEFAULT_QUOTA, PEOPLE_FILE, People, PeopleError

    store = People(instance_folder(args.instance) / PEOPLE_FILE)
    try:
        if args.action == "add":
            person, token = store.add(args.name, DEFAULT_QUOTA if args.quota is None else args.quota)
            print(f"Added {person.name} (id {person.id}, {person.quota} images a day).")
            print(f"Personal link (shown once): {args.url.rstrip('/')}/login?token={token}")
            print(f"API token (Authorization: Bearer): {token}")
        elif args.action == "list":
            for p in store.all():
                state = "active" if p.active else f"revoked {p.revoked}"
                print(f"{p.id}  {p.name}  {p.used_on_today()}/{p.quota} images today  {state}")
        elif args.action == "revoke":
            person = store.revoke(args.id)
            print(f"Revoked {person.name} (id {person.id}): their link and sessions stop at their next request. "
                  "Jobs they already queued still run (revoking on /admin cancels them).")
        else:
            person = store.set_quota(args.id, args.quota)
            print(f"{person.name} (id {person.id}): {person.quota} images a day.")
    except PeopleError as exc:
        raise CLIError(str(exc)) from exc
    return 0
