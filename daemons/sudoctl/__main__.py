"""sudoctl: the operator's command line for Sudo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time

import aiohttp

from sudo_api.accounts import Accounts, InvalidInput
from sudo_core import config
from sudo_core.db import Database
from sudo_core.families import BadFamilyId, parse_family_id
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError


def ago(ts: float | None) -> str:
    return "never" if ts is None else f"{time.time() - ts:.0f} s ago"


def families(settings: config.Settings, args: argparse.Namespace) -> int:
    db = Database(settings.core.database_path)
    try:
        if args.action == "add":
            family = db.create_family(args.name)
            print(family.id)
        else:
            for f in db.list_families():
                print(f"{f.id}  {f.name:<24} last active {ago(f.last_active_at)}")
    finally:
        db.close()
    return 0


async def create_admin(settings: config.Settings, args: argparse.Namespace) -> int:
    """An admin account; the password is read from stdin, never from the command line."""
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    db = Database(settings.core.database_path)
    try:
        account = await Accounts(db, settings.api.session_days).sign_up(
            args.email, password, args.name, None, is_admin=True
        )
    except InvalidInput as exc:
        print(f"sudoctl: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    print(f"admin {account.email} created ({account.id})")
    return 0


async def runtimes(settings: config.Settings, args: argparse.Namespace) -> int:
    async with ProvisionerClient(settings.provisioner.socket) as provisioner:
        if args.command == "runtimes":
            for rt in await provisioner.list():
                print(f"{rt['name']}  {rt['state']:<8} {rt['url'] or '-':<26} {rt['image']}")
        elif args.command == "ensure":
            print(json.dumps(await provisioner.ensure(parse_family_id(args.family)), indent=2))
        elif args.command == "stop":
            result = await provisioner.stop(parse_family_id(args.family), purge=args.purge)
            print(json.dumps(result))
        elif args.command == "restart-all":
            failed = 0
            async for event in provisioner.restart_all():
                if event["event"] == "start":
                    print(f"recreating {event['total']} runtime(s)")
                elif event["event"] in ("restarted", "failed"):
                    failed += event["event"] == "failed"
                    detail = f": {event['error']}" if "error" in event else ""
                    print(
                        f"[{event['done']}/{event['total']}] {event['user_id']} "
                        f"{event['event']} in {event['seconds']} s{detail}"
                    )
                else:
                    print(f"done: {event['restarted']} restarted, {len(event['failed'])} failed")
            return 1 if failed else 0
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="sudoctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fam = sub.add_parser("families", help="list or add families")
    fam_sub = fam.add_subparsers(dest="action")
    fam_sub.add_parser("list")
    add = fam_sub.add_parser("add")
    add.add_argument("name")
    sub.add_parser("runtimes", help="list family runtimes")
    for name, text in (("ensure", "start a family's runtime"), ("stop", "stop a family's runtime")):
        p = sub.add_parser(name, help=text)
        p.add_argument("family", help="the family's id (a UUID)")
        if name == "stop":
            p.add_argument("--purge", action="store_true", help="also delete its data volume")
    sub.add_parser("restart-all", help="recreate every running runtime, showing progress")
    adm = sub.add_parser("create-admin", help="create an admin account (asks for the password)")
    adm.add_argument("--email", required=True)
    adm.add_argument("--name", default="Admin")
    adm.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    args = parser.parse_args()
    try:
        settings = config.load()
        if args.command == "families":
            sys.exit(families(settings, args))
        if args.command == "create-admin":
            sys.exit(asyncio.run(create_admin(settings, args)))
        sys.exit(asyncio.run(runtimes(settings, args)))
    except (config.ConfigError, BadFamilyId, ValueError, ProvisionerError) as exc:
        sys.exit(f"sudoctl: {exc}")
    except aiohttp.ClientConnectionError as exc:
        sys.exit(f"sudoctl: cannot reach the provisioner at {settings.provisioner.socket}: {exc}")


if __name__ == "__main__":
    main()
