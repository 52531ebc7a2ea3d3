"""A family's backup (`sudoctl backup`) restored onto a fresh host (`sudoctl restore`): its history,
its accounts and its agent's volume come back, and the agent answers there. The provisioner's
volume API underneath refuses what it cannot restore whole, changing nothing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shlex
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pyrage
import pytest
from control_plane import Family, join, sign_up
from stack import BIN, Stack, running_host
from test_api_chat import wait_status

from sudo_core.provisioner_client import ProvisionerClient, ProvisionerError

PASSWORD = "correct horse battery"  # what conftest.sign_up sets


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second host: its own state directory, database, secrets, network, provisioner and sudo-api."""
    with running_host(tmp_path_factory.mktemp("fresh")) as s:
        yield s


async def sudoctl(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "sudoctl"), *args],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=600,
    )


async def log_in(http: aiohttp.ClientSession, stack: Stack, email: str) -> Family:
    body = {"email": email, "password": PASSWORD}
    async with http.post(f"{stack.api_url}/v1/auth/login", json=body) as resp:
        data = await resp.json()
        assert resp.status == 200, data
    return Family(http, stack.api_url, data["token"], data["account"] | {"email": email})


async def history(family: Family) -> list[dict]:
    status, body = await family.call("GET", "/v1/chat/messages?limit=500")
    assert status == 200, body
    return [{k: v for k, v in m.items() if k != "n"} for m in body["messages"]]  # n is per host


async def family_with_a_past(
    api: Stack, http, name: str, said: str
) -> tuple[Family, uuid.UUID, str, list[dict]]:
    """A family that told its agent `said` (answered) and has a marker file on its volume: the
    family, its id, the marker, and its history as it stands."""
    family = await sign_up(http, api.api_url, name)
    family_id = uuid.UUID(family.id)
    await wait_status(family, await family.send(said), "answered", 180)
    marker = uuid.uuid4().hex
    wrote = api.container(family_id).exec_run(["sh", "-c", f"echo {marker} > /opt/data/marker.txt"])
    assert wrote.exit_code == 0, wrote.output
    return family, family_id, marker, await history(family)


def family_count(stack: Stack) -> int:
    return len(stack.db.list_families())


async def test_the_owner_downloads_the_familys_archive_and_it_restores(
    api: Stack, fresh: Stack, http, tmp_path: Path
):
    """The owner's download is the archive `sudoctl backup` writes: every member and every
    thread in it, and `sudoctl restore` takes it onto a fresh host."""
    family = await sign_up(http, api.api_url, "Franklin")
    adult = await join(family, "Rosalind")
    await wait_status(adult, await adult.send("a thread of my own"), "answered", 180)
    status, body = await adult.call("GET", "/v1/family/archive")
    assert status == 403 and "owner" in body["error"]
    async with http.get(f"{api.api_url}/v1/family/archive", headers=family.headers) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/gzip"
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="sudo-family-')
        out = tmp_path / "franklin.tar.gz"
        out.write_bytes(await resp.read())
    with tarfile.open(out) as archive:
        assert archive.getnames() == ["family.json", "volume.tar"]
        rows = json.load(archive.extractfile("family.json"))
    assert sorted(a["role"] for a in rows["accounts"]) == ["adult", "owner"]
    assert {m["account_id"] for m in rows["messages"]} == {adult.member_id}

    restored = await sudoctl(fresh, "restore", family.id, str(out))
    assert restored.returncode == 0, restored.stderr
    moved = await log_in(http, fresh, adult.account["email"])
    assert (await history(moved))[0]["text"] == "a thread of my own"


async def test_a_family_moves_to_a_fresh_host(api: Stack, fresh: Stack, http, tmp_path: Path):
    family, family_id, marker, before = await family_with_a_past(
        api, http, "Lovelace", "remember the blue kite"
    )

    out = tmp_path / "lovelace.tar.gz"
    made = await sudoctl(api, "backup", family.id, "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert "volume copied: " in made.stdout and f"backed up family {family.id} (Lovelace)" in made.stdout
    assert "1 account(s), 2 message(s)" in made.stdout
    assert api.container(family_id).status == "running"  # paused for the copy only
    assert out.stat().st_mode & 0o777 == 0o600  # password hashes inside
    with tarfile.open(out) as archive:
        assert archive.getnames() == ["family.json", "volume.tar"]
        rows = json.load(archive.extractfile("family.json"))
        with tarfile.open(fileobj=io.BytesIO(archive.extractfile("volume.tar").read())) as volume:
            members = {m.name: m for m in volume.getmembers()}
    assert rows["family"]["id"] == family.id and rows["accounts"][0]["password_hash"].startswith("$argon2id$")
    assert "sessions" not in rows and "leases" not in rows
    assert members["./marker.txt"].uid == 10000
    assert "./state.db" in members and "./memories/MEMORY.md" in members  # Hermes's own state

    restored = await sudoctl(fresh, "restore", family.id, str(out))
    assert restored.returncode == 0, restored.stderr
    assert "volume sent: " in restored.stdout
    assert f"restored family {family.id} (Lovelace)" in restored.stdout

    moved = await log_in(http, fresh, family.account["email"])  # the password hash came along
    assert await history(moved) == before
    asked = len(fresh.llm_requests())
    message_id = await moved.send("what should you remember?")
    await wait_status(moved, message_id, "answered", 180)
    replies = [m for m in await history(moved) if m["reply_to"] == message_id]
    assert replies[0]["text"].startswith("stub says: what should you remember?")
    # The agent on the fresh host carried on the same conversation, from its restored state.
    question = next(r for r in fresh.llm_requests()[asked:] if r["last_user"].startswith("what should"))
    assert any("blue kite" in m for m in question["user_messages"]), question
    container = fresh.container(family_id)
    shown = container.exec_run(["sh", "-c", "cat /opt/data/marker.txt; stat -c %u /opt/data/marker.txt"])
    assert shown.output.decode().split() == [marker, "10000"]

    # Refusals: each says why and changes nothing.
    families = family_count(fresh)
    after = await history(moved)
    other = str(uuid.uuid4())
    wrong = await sudoctl(fresh, "restore", other, str(out))
    assert wrong.returncode == 1 and f"holds family {family.id}, not {other}" in wrong.stderr
    for name, content in (("cut.tar.gz", out.read_bytes()[: out.stat().st_size // 2]), ("junk", b"junk")):
        (tmp_path / name).write_bytes(content)
        corrupt = await sudoctl(fresh, "restore", family.id, str(tmp_path / name))
        assert corrupt.returncode == 1 and "is not a readable Sudo backup" in corrupt.stderr, corrupt.stderr
    again = await sudoctl(fresh, "restore", family.id, str(out))
    assert again.returncode == 1 and "already exists here: --replace overwrites it" in again.stderr
    assert family_count(fresh) == families and await history(moved) == after
    container.reload()
    assert container.status == "running"  # its volume was not touched

    # --replace puts the family back as it was in the file (the sessions go with the old rows).
    replaced = await sudoctl(fresh, "restore", "--replace", family.id, str(out))
    assert replaced.returncode == 0, replaced.stderr
    assert fresh.container(family_id) is None  # stopped for its volume to be replaced
    moved = await log_in(http, fresh, family.account["email"])
    assert await history(moved) == before


UNITS = Path(__file__).resolve().parents[2] / "units"


def exec_start(unit: str) -> list[str]:
    """The unit's ExecStart= as a command line here: the packaged virtualenv's bin is ours."""
    line = next(x for x in (UNITS / unit).read_text().splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart="))
    return [str(BIN / Path(argv[0]).name), *argv[1:]]


async def test_the_nightly_backup_is_encrypted_and_restores_with_the_key_only(
    api: Stack, fresh: Stack, http, tmp_path: Path
):
    """sudo-backup.service's command, as the timer runs it: every family's archive encrypted to
    the recipients, the runtime paused (not stopped) for its copy; the bytes say nothing without
    the key; with it, the family comes back whole on a fresh host."""
    family, family_id, marker, before = await family_with_a_past(
        api, http, "Curie", "remember the radium notebook"
    )
    running = api.container(family_id).id

    key = pyrage.x25519.Identity.generate()
    key_file = tmp_path / "backup.key"
    key_file.write_text(f"{key}\n")
    backup_dir = tmp_path / "backups"
    env = api.env | {"SUDO_BACKUP_DIR": str(backup_dir), "SUDO_BACKUP_RECIPIENTS": str(key.to_public())}
    night = await asyncio.to_thread(
        subprocess.run,
        exec_start("sudo-backup.service"),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert night.returncode == 0, night.stderr
    [night_dir] = backup_dir.iterdir()
    manifest = json.loads((night_dir / "manifest.json").read_text())
    entry = next(f for f in manifest["families"] if f["family"] == family.id)
    assert manifest["errors"] == [] and entry["paused_sec"] > 0
    assert (
        f"{family.id}: {entry['bytes']:,} bytes in " in night.stdout and "its runtime paused" in night.stdout
    )
    container = api.container(family_id)
    assert container.id == running and container.status == "running"  # paused, never stopped

    archive = night_dir / f"{family.id}.tar.age"
    data = archive.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
    assert data.startswith(b"age-encryption.org/v1\n") and not tarfile.is_tarfile(archive)
    for secret in (b"radium notebook", marker.encode(), family.account["email"].encode(), b"Curie"):
        assert secret not in data
    async with http.get(f"http://{api.settings.api.metrics}/metrics") as resp:
        metrics = await resp.text()
    assert "sudo_backup_last_failed 0.0" in metrics
    assert "sudo_backup_last_success_timestamp 0.0" not in metrics

    stranger = tmp_path / "stranger.key"
    stranger.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    refused = await sudoctl(fresh, "restore", "--identity", str(stranger), str(archive))
    assert refused.returncode == 1 and "cannot be decrypted with this identity" in refused.stderr
    verified = await sudoctl(api, "backup", "verify", str(archive), "--identity", str(key_file))
    assert verified.returncode == 0 and f"ok {archive}: family {family.id} (Curie)" in verified.stdout

    restored = await sudoctl(fresh, "restore", "--identity", str(key_file), str(archive))
    assert restored.returncode == 0, restored.stderr
    moved = await log_in(http, fresh, family.account["email"])
    assert await history(moved) == before
    asked = len(fresh.llm_requests())
    message_id = await moved.send("what should you remember?")
    await wait_status(moved, message_id, "answered", 180)
    question = next(r for r in fresh.llm_requests()[asked:] if r["last_user"].startswith("what should"))
    assert any("radium notebook" in m for m in question["user_messages"]), question
    shown = fresh.container(family_id).exec_run(["cat", "/opt/data/marker.txt"])
    assert shown.output.decode().strip() == marker


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.uid, info.gid = len(data), 10000, 10000
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def chunks_of(data: bytes):
    yield data


async def volume_files(provisioner: ProvisionerClient, family: uuid.UUID) -> dict[str, tuple[bytes, int]]:
    data = b"".join([chunk async for chunk in provisioner.get_volume(family)])
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        return {m.name: (archive.extractfile(m).read(), m.uid) for m in archive.getmembers() if m.isfile()}


async def test_the_volume_api_refuses_what_it_cannot_restore_whole(stack: Stack, provisioner):
    family = stack.new_family("Volumes").id
    result = await provisioner.put_volume(family, chunks_of(tar_of({"notes/a.txt": b"kept"})))
    assert result == {"family": str(family), "bytes": len(tar_of({"notes/a.txt": b"kept"}))}
    assert await volume_files(provisioner, family) == {"./notes/a.txt": (b"kept", 10000)}

    whole = tar_of({"b.txt": b"x" * 5000})
    for body, why in (
        (b"not a tar at all" * 100, "body must be a tar of the volume's contents"),
        (whole[:1024], "body must be a tar of the volume's contents"),  # cut inside b.txt
        (tar_of({"../escape.txt": b"x"}), "'../escape.txt' points outside the volume"),
        (tar_of({"/etc/passwd": b"x"}), "'/etc/passwd' points outside the volume"),
    ):
        with pytest.raises(ProvisionerError, match=why) as refused:
            await provisioner.put_volume(family, chunks_of(body))
        assert refused.value.status == 400
    assert await volume_files(provisioner, family) == {"./notes/a.txt": (b"kept", 10000)}

    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(stack.socket))) as raw:
        for method in ("GET", "PUT"):
            async with raw.request(method, "http://p/v1/runtimes/not-a-uuid/volume", data=whole) as resp:
                assert resp.status == 400 and "must be a UUID" in (await resp.json())["error"]
            nobody = uuid.uuid4()
            async with raw.request(method, f"http://p/v1/runtimes/{nobody}/volume", data=whole) as resp:
                assert resp.status == 404 and (await resp.json())["error"] == f"no family {nobody}"
    # Only this stack's helpers: another worker's stack may be copying a volume right now.
    ours = {"label": ["sudo.role=volume-copy", f"sudo.scope={stack.network}"]}
    assert not stack.docker.containers.list(all=True, filters=ours)


def test_backup_files_are_secret_even_under_a_loose_umask(api: Stack, tmp_path: Path):
    family = api.new_family("Umask").id
    out = tmp_path / "umask.tar.gz"
    old = os.umask(0)
    try:
        made = subprocess.run(
            [str(BIN / "sudoctl"), "backup", str(family), "-o", str(out)],
            env=api.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        os.umask(old)
    assert made.returncode == 0, made.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["umask.tar.gz"]  # no spool file left behind
