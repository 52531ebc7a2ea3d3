"""sudoctl: the operator's command line for Sudo."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
from pathlib import Path

import aiohttp

from sudo_core import backups, config, family_admin, host_settings
from sudo_core.accounts import AccountError, Accounts
from sudo_core.db import Database
from sudo_core.families import BadFamilyId, parse_family_id
from sudo_core.family_archive import ArchiveError
from sudo_core.members import Members
from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError

from . import firewall, web
from .backup import backup, backup_all, list_nights, restore, verify
from .status import NoSystemd, runtime_line, status


def ago(ts: float | None) -> str:
    return "never" if ts is None else f"{time.time() - ts:.0f} s ago"


def families(settings: config.Settings, args: argparse.Namespace) -> int:
    db = Database(settings.core.database_path)
    try:
        if args.action == "add":
            family = db.create_family(args.name)
            print(family.id)
        else:
            members = db.member_counts()
            for f in db.list_families():
                state = "  DISABLED" if f.disabled_at else ""
                print(
                    f"{f.id}  {f.name:<24} {members.get(f.id, 0)} member(s), "
                    f"last active {ago(f.last_active_at)}{state}"
                )
    finally:
        db.close()
    return 0


async def family_state(settings: config.Settings, args: argparse.Namespace) -> int:
    """Disable, enable or delete a family, as /admin does."""
    family = parse_family_id(args.family)
    if args.action == "delete" and not args.yes:
        print("sudoctl: deleting a family cannot be undone: add --yes to delete it", file=sys.stderr)
        return 2
    db = Database(settings.core.database_path)
    try:
        async with ProvisionerClient(settings.provisioner.socket) as provisioner:
            if args.action == "delete":
                gone = await family_admin.delete(db, provisioner, family)
                print(f"deleted {gone.name} ({family}): its runtime, volume, members and devices")
            else:
                try:
                    await family_admin.set_disabled(db, provisioner, family, args.action == "disable")
                except (ProvisionerError, aiohttp.ClientError) as exc:
                    print(
                        f"sudoctl: disabled {family}, but its agent could not be stopped: {exc}",
                        file=sys.stderr,
                    )
                    return 1
                print(f"{args.action}d {family}")
    except AccountError as exc:
        print(f"sudoctl: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    return 0


def links(settings: config.Settings, args: argparse.Namespace) -> int:
    """An invitation to sign up a new family, or a password reset link for an account."""
    db = Database(settings.core.database_path)
    try:
        if args.command == "invite":
            _, token = Members(Accounts(db, settings.api.session_days)).invite(None)
            print(f"{args.url.rstrip('/')}/join/{token}")
            print("valid 7 days, once: whoever opens it creates a family", file=sys.stderr)
            return 0
        accounts = Accounts(db, settings.api.session_days)
        account = accounts.by_login(args.login)
        if account is None:
            print(f"sudoctl: no account {args.login}", file=sys.stderr)
            return 1
        token = accounts.issue_reset(account.id, None)
        print(f"{args.url.rstrip('/')}/reset/{token}")
        print(f"valid an hour, once: it sets a new password for {args.login}", file=sys.stderr)
        return 0
    finally:
        db.close()


async def create_admin(settings: config.Settings, args: argparse.Namespace) -> int:
    """An admin account; the password is read from stdin, never from the command line."""
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    db = Database(settings.core.database_path)
    try:
        account = await Accounts(db, settings.api.session_days).sign_up(
            args.email, password, args.name, None, is_admin=True
        )
    except AccountError as exc:
        print(f"sudoctl: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    print(f"admin {account.email} created ({account.id})")
    return 0


def admins(settings: config.Settings) -> int:
    """The admin accounts' emails, one a line (what a script checks before creating one)."""
    db = Database(settings.core.database_path)
    try:
        for row in db.query("SELECT email FROM accounts WHERE is_admin = 1 ORDER BY created_at"):
            print(row["email"])
    finally:
        db.close()
    return 0


def admin_settings(settings: config.Settings, args: argparse.Namespace) -> int:
    """The admin's settings, as /admin/settings holds them: listed (secrets only as set or not), or one set.

    A value is read from stdin, never from the command line, and never printed: this is how a
    script hands over a secret. It is checked and stored as the admin page would.
    """
    db = Database(settings.core.database_path)
    try:
        if args.action == "list":
            for key, value in host_settings.current(db).items():
                shown = ("set" if value["set"] else "not set") if isinstance(value, dict) else value
                print(f"{key} = {shown}")
            return 0
        value = sys.stdin.readline().rstrip("\n")
        try:
            clean = host_settings.validate({args.key: value}, settings.api.allow_http_urls)
            changed = host_settings.store(db, clean)
        except host_settings.InvalidSetting as exc:
            print(f"sudoctl: {exc}", file=sys.stderr)
            return 2
    finally:
        db.close()
    print(f"{args.key} {'changed' if args.key in changed else 'unchanged'}")
    for secret in host_settings.cleared(changed, clean):
        print(f"sudoctl: {secret} is cleared, since its address changed: set it again", file=sys.stderr)
    if args.key in changed and host_settings.FIELDS[args.key].restart:
        print("the runtimes carry it: run `sudoctl restart-all` to recreate them")
    return 0


async def runtimes(settings: config.Settings, args: argparse.Namespace) -> int:
    async with ProvisionerClient(settings.provisioner.socket) as provisioner:
        if args.command == "runtimes":
            for rt in await provisioner.list():
                print(runtime_line(rt))
        elif args.command == "ensure":
            print(json.dumps((await provisioner.ensure(parse_family_id(args.family))).to_json(), indent=2))
        elif args.command == "stop":
            result = await provisioner.stop(parse_family_id(args.family), purge=args.purge)
            print(json.dumps(result))
        elif args.command == "restart-all":
            failed = 0
            async for event in provisioner.restart_all():
                if event["event"] == "done":
                    failed = len(event["failed"])
                    print(f"done: {event['restarted']} restarted, {failed} failed")
                else:
                    print_progress(event)
            return 1 if failed else 0
    return 0


def print_progress(event: dict) -> None:
    """One line per event of a fleet change (restart-all, an image upgrade or rollback)."""
    kind = event["event"]
    if kind == "start":
        print(f"recreating {event['total']} runtime(s)")
    elif kind in ("restarted", "failed", "kept"):
        detail = f": {event['error']}" if "error" in event else ""
        print(f"[{event['done']}/{event['total']}] {event['family']} {kind} in {event['seconds']} s{detail}")
    elif kind == "canary":
        print(f"trying {event['image']} (now {event['from']}) on the canary {event['family']}")
    elif kind == "canary passed":
        print(f"the canary {event['family']} is healthy and answered a chat turn")
    elif kind == "rolling back":
        print(f"rolling back to {event['image']}: {event['reason']}")


async def image(settings: config.Settings, args: argparse.Namespace) -> int:
    """The runtimes' Hermes image: shown, upgraded through a canary, rolled back."""
    async with ProvisionerClient(settings.provisioner.socket) as provisioner:
        if args.action == "show":
            shown = await provisioner.image()
            current, previous = shown["current"], shown["previous"]
            print(f"current:  {current['ref']}" + (f" ({current['id']})" if current["id"] else ""))
            print(f"previous: {previous['ref']} ({previous['id']})" if previous else "previous: none")
            if shown["upgrade"]:
                print(f"under way: {shown['upgrade']['target']} ({shown['upgrade']['phase']})")
            for event in shown["history"]:
                at = time.strftime("%Y-%m-%d %H:%M", time.localtime(event["at"]))
                reason = f": {event['reason']}" if event["reason"] else ""
                print(f"{at}  {event['kind']} to {event['image']} from {event['from_image']}{reason}")
            return 0
        events = (
            provisioner.image_upgrade(args.ref) if args.action == "upgrade" else provisioner.image_rollback()
        )
        async for event in events:
            if event["event"] != "done":
                print_progress(event)
                continue
            failed = len(event["failed"])
            if event["outcome"] == "upgraded":
                print(f"upgraded to {event['image']} ({failed} runtime(s) failed)")
                return 1 if failed else 0
            print(
                f"rolled back to {event['image']} from {event['from']} ({failed} failed): {event['reason']}"
            )
            return 0 if args.action == "rollback" and not failed else 1
    return 1


def backup_or_restore(settings: config.Settings, args: argparse.Namespace) -> int:
    if args.command == "backup":
        what = args.what
        if args.all != (not what):
            raise ValueError("backup takes a family's id, list, verify FILE|NIGHT, or --all")
        if args.all:
            return backup_all(settings)
        if what == ["list"]:
            return list_nights(settings)
        if what[0] == "verify":
            if len(what) != 2 or args.identity is None:
                raise ValueError("backup verify takes one FILE or NIGHT and --identity KEYFILE")
            return verify(settings, what[1], args.identity)
        if len(what) != 1:
            raise ValueError("backup takes one family's id")
    elif len(args.what) > 2:
        raise ValueError("restore takes [FAMILY] FILE")
    # A restore without the family's id restores the family the file holds.
    family = parse_family_id(args.what[0]) if args.command == "backup" or len(args.what) == 2 else None
    db = Database(settings.core.database_path)
    try:
        if family is not None and args.command == "backup":
            out = args.output or Path(f"sudo-family-{family}-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
            backup(db, settings.provisioner.socket, family, out)
        else:
            restore(db, settings.provisioner.socket, family, Path(args.what[-1]), args.replace, args.identity)
    finally:
        db.close()
    return 0


def host_firewall(settings: config.Settings, action: str) -> int:
    if action == "show":
        print(firewall.ruleset(settings), end="")
    elif action == "apply":
        firewall.apply(settings)
        rt = settings.runtime
        print(
            f"sudoctl: {rt.bridge} reaches {rt.host_address}:{settings.gateway.port} (the gateway) "
            "and nothing else of this host"
        )
    elif firewall.remove(settings):
        print(f"sudoctl: removed the firewall table of {settings.runtime.bridge}")
    return 0


def web_caddyfile(settings: config.Settings, output: Path | None) -> int:
    text = web.caddyfile(settings)
    if output is None:
        print(text, end="")
    else:
        output.write_text(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """sudoctl's command line; its manual page (tools/manpage.py) is written from it at build time."""
    parser = argparse.ArgumentParser(prog="sudoctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fam = sub.add_parser("families", help="list, add, disable, enable or delete families")
    fam_sub = fam.add_subparsers(dest="action")
    fam_sub.add_parser("list")
    add = fam_sub.add_parser("add")
    add.add_argument("name")
    for action, text in (
        ("disable", "stop a family's agent and tell its members it is disabled"),
        ("enable", "enable a disabled family again"),
        ("delete", "delete a family and everything of it: runtime, volume, members, devices"),
    ):
        one_family = fam_sub.add_parser(action, help=text)
        one_family.add_argument("family", help="the family's id (a UUID)")
        if action == "delete":
            one_family.add_argument("--yes", action="store_true", help="yes, irreversibly")
    url_help = "this site's public address, e.g. https://sudo.example.org"
    inv = sub.add_parser("invite", help="print a link that lets someone sign up a new family")
    inv.add_argument("--url", default="", help=url_help)
    reset = sub.add_parser("reset-link", help="print a one-time link that sets an account's password")
    reset.add_argument("login", help="the account's email, or a child's username")
    reset.add_argument("--url", default="", help=url_help)
    sub.add_parser("runtimes", help="list family runtimes")
    for name, text in (("ensure", "start a family's runtime"), ("stop", "stop a family's runtime")):
        p = sub.add_parser(name, help=text)
        p.add_argument("family", help="the family's id (a UUID)")
        if name == "stop":
            p.add_argument("--purge", action="store_true", help="also delete its data volume")
    sub.add_parser("restart-all", help="recreate every running runtime, showing progress")
    img = sub.add_parser(
        "image",
        help="the runtimes' Hermes image: show it, upgrade it through a canary, roll it back",
        description="`upgrade REF` tries the local image REF (built, or pulled and tagged, on this host) "
        "on one canary runtime, which must become healthy and answer a chat turn; then recreates the "
        "running runtimes on it, the least recently active first. The canary failing, or more than "
        "image.max_failures runtimes, rolls every runtime back to the image before. `rollback` goes "
        "back to the previous image. Exit 1 when it rolled back or a runtime failed.",
    )
    img_sub = img.add_subparsers(dest="action", required=True)
    img_sub.add_parser("show", help="the current and previous image, the last upgrades and rollbacks")
    up = img_sub.add_parser("upgrade", help="canary, then every running runtime, on REF")
    up.add_argument("ref", metavar="REF", help="a local image, e.g. sudo-hermes:0.20.0")
    img_sub.add_parser("rollback", help="every runtime back on the previous image")
    sub.add_parser(
        "status", help="the sudo units' states (exit 1 if one is unhealthy), then the family runtimes"
    )
    secret = "The file holds password and device token hashes: keep it as secret as the host's keys."
    bak = sub.add_parser(
        "backup",
        help="save a family's data volume and database rows to a secret file; or every family's, "
        "encrypted (--all, nightly); list or verify those",
        description=f"Save a family's data volume and database rows to one file (mode 0600). {secret} "
        "With --all (what sudo-backup.timer runs nightly): every family's, encrypted with age to "
        "backup.recipients, into backup.dir/<date>/. `backup list` shows the nights; `backup verify "
        "FILE|NIGHT --identity KEYFILE` decrypts and checks archives without restoring them. A "
        "family's runtime is paused for the copy of its volume, once no request of it is in flight.",
    )
    bak.add_argument("what", nargs="*", metavar="FAMILY | list | verify FILE|NIGHT")
    bak.add_argument("--all", action="store_true", help="every family, encrypted, into backup.dir")
    bak.add_argument("--identity", type=Path, metavar="KEYFILE", help="the age private key, for verify")
    bak.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="the file to write (default: sudo-family-ID-TIME.tar.gz)",
    )
    res = sub.add_parser(
        "restore",
        help="restore a family from a backup file, on this or a fresh host",
        description=f"Restore a family's rows and data volume from a `sudoctl backup` file, or an "
        f"encrypted nightly one with --identity. {secret}",
    )
    res.add_argument(
        "what",
        nargs="+",
        metavar="[FAMILY] FILE",
        help="the file written by sudoctl backup; the family's id, if given, must be the one in it",
    )
    res.add_argument(
        "--identity", type=Path, metavar="KEYFILE", help="the age private key of an encrypted file"
    )
    res.add_argument("--replace", action="store_true", help="overwrite the family if it exists here")
    adm = sub.add_parser("create-admin", help="create an admin account (asks for the password)")
    adm.add_argument("--email", required=True)
    adm.add_argument("--name", default="Admin")
    adm.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sub.add_parser("admins", help="list the admin accounts' emails")
    sets = sub.add_parser("settings", help="list or set the admin's settings (those of /admin/settings)")
    sets_sub = sets.add_subparsers(dest="action", required=True)
    sets_sub.add_parser("list", help="every setting; secrets only as set or not set")
    one = sets_sub.add_parser(
        "set",
        help="set one setting to the line read from stdin (never echoed)",
        description="Set one admin setting to the first line read from stdin; an empty line clears it "
        "(a secret keeps its value). The value is checked as /admin/settings checks it, and never printed.",
    )
    one.add_argument("key", choices=sorted(host_settings.FIELDS), metavar="KEY", help="e.g. livekit.url")
    fw = sub.add_parser(
        "firewall",
        help="apply, remove or show the host's firewall for the family runtimes (nftables; as root)",
    )
    fw.add_argument("action", choices=("apply", "remove", "show"))
    site = sub.add_parser("web", help="sudo-web's Caddyfile, from the settings ([web], api.listen)")
    site.add_argument("action", choices=("caddyfile",))
    site.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it there, not to stdout")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    try:
        settings = config.load()
        if args.command == "families" and args.action in ("disable", "enable", "delete"):
            sys.exit(asyncio.run(family_state(settings, args)))
        if args.command == "families":
            sys.exit(families(settings, args))
        if args.command in ("invite", "reset-link"):
            sys.exit(links(settings, args))
        if args.command == "create-admin":
            sys.exit(asyncio.run(create_admin(settings, args)))
        if args.command == "admins":
            sys.exit(admins(settings))
        if args.command == "settings":
            sys.exit(admin_settings(settings, args))
        if args.command == "status":
            sys.exit(status(settings.provisioner.socket))
        if args.command in ("backup", "restore"):
            sys.exit(backup_or_restore(settings, args))
        if args.command == "firewall":
            sys.exit(host_firewall(settings, args.action))
        if args.command == "web":
            sys.exit(web_caddyfile(settings, args.output))
        if args.command == "image":
            sys.exit(asyncio.run(image(settings, args)))
        sys.exit(asyncio.run(runtimes(settings, args)))
    except NoSystemd as exc:
        print(f"sudoctl: {exc}", file=sys.stderr)
        sys.exit(2)
    except (
        config.ConfigError,
        BadFamilyId,
        ValueError,
        ProvisionerError,
        ArchiveError,
        backups.BackupError,
        firewall.FirewallError,
    ) as exc:
        sys.exit(f"sudoctl: {exc}")
    except aiohttp.ClientConnectionError as exc:
        sys.exit(f"sudoctl: cannot reach the provisioner at {settings.provisioner.socket}: {exc}")
    except OSError as exc:  # a file that cannot be read or written
        sys.exit(f"sudoctl: {exc}")


if __name__ == "__main__":
    main()
