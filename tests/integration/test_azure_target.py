"""Replication to Azure Blob Storage end to end: a real mobility service, a real engine, Azurite over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob.aio import BlobLeaseClient, BlobServiceClient

from engine.storage.azure import SLOT
from tests.appliance import Appliance, Mobility, change_disk, fill_disk, wait_for
from tests.azurite import Azurite

MiB = 1024 * 1024


async def _tamper_last_block(azurite: Azurite, container: str) -> tuple[str, int]:
    """Flip a byte of the last block that holds data in the one seed blob in ``container``, as someone with the
    account's key could; returns the blob's name and the block's offset on the disk."""
    async with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        client = service.get_container_client(container)
        name = next(iter([b.name async for b in client.list_blobs() if b.name.endswith("/seed")]))
        blob = client.get_blob_client(name)
        last = [r async for r in blob.list_page_ranges() if not r.cleared][-1]
        at = (last.end // SLOT) * SLOT  # the last slot that holds data
        page = bytearray(await (await blob.download_blob(at, 512)).readall())
        page[7] ^= 0x40
        for _ in range(50):  # the log processor leases the blob while it applies: break in, as an attacker can
            with contextlib.suppress(HttpResponseError):  # no lease held just now
                await BlobLeaseClient(blob).break_lease(lease_break_period=0)
            try:
                await blob.upload_page(bytes(page), at, 512)
                break
            except HttpResponseError:  # leased again meanwhile
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("the seed blob could not be written past its lease")
        return name, at // SLOT * 65536


def _set_azure(appliance: Appliance, azurite: Azurite, container: str, tmp_path: Path) -> list[str]:
    """``godwit target set azure`` from a connection string file; what it said after its first line."""
    secret = tmp_path / "connection-string"
    secret.write_text(azurite.connection_string + "\n")
    res = appliance.cli("target", "set", "azure", "--account-url", azurite.account_url, "--container", container,
                        "--connection-string-file", str(secret), timeout=150)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"Servers enabled from now on replicate to container {container} of {azurite.account_url}."
    return lines[1:]


def test_a_server_enabled_after_target_set_azure_replicates_there_byte_for_byte(
        appliance: Appliance, azurite: Azurite, tmp_path: Path) -> None:
    """Initial and delta replication into Azurite; each point exports (raw and VHD) equal to the source; a server
    that replicated before the change keeps its local target; the credential is in no file but the secret file."""
    early_disk = appliance.root / "early.img"
    fill_disk(early_disk, 4 * MiB, seed=1)
    disk = appliance.root / "web.img"
    fill_disk(disk, 12 * MiB, seed=2)
    early = Mobility(appliance, "early-01", disks=[early_disk]).start()
    web = Mobility(appliance, "web-01", disks=[disk]).start()
    try:
        wait_for(lambda: {"early-01", "web-01"} <= set(appliance.servers()), what="registration")
        appliance.enable("early-01")
        wait_for(lambda: appliance.servers()["early-01"]["state"] == "protected", timeout=60,
                 what="early-01 to be protected on the local target")

        said = _set_azure(appliance, azurite, "replicas", tmp_path)
        assert said == ["early-01 keep the target they began on until disabled and enabled again."]
        outbound = [r for r in appliance.json("ports", "show")["firewall"] if r["direction"] == "outbound"]
        assert outbound == [{"direction": "outbound", "protocol": "TCP", "port": azurite.port, "peer": "127.0.0.1",
                             "purpose": "target storage: Azure Blob Storage (HTTP)"}]
        shown = appliance.json("target", "show")
        assert (shown["kind"], shown["container"], shown["servers_elsewhere"]) == ("azure", "replicas", ["early-01"])

        appliance.enable("web-01")
        wait_for(lambda: appliance.servers()["web-01"]["state"] == "protected", timeout=90,
                 what="web-01's initial replication into Azurite")
        v1 = disk.read_bytes()
        first = appliance.points("web-01")[0]
        assert appliance.export("web-01", first["id"], tmp_path / "a").read_bytes() == v1

        change_disk(disk, seed=3)
        t = time.time()
        v2 = disk.read_bytes()
        p2 = appliance.point_after("web-01", t)
        assert appliance.export("web-01", p2["id"], tmp_path / "b").read_bytes() == v2
        assert appliance.export("web-01", first["id"], tmp_path / "c").read_bytes() == v1
        vhd = appliance.export("web-01", p2["id"], tmp_path / "d", fmt="vhd").read_bytes()
        assert vhd[:len(v2)] == v2 and vhd[-512:][:8] == b"conectix"

        # Where each copy is: web-01 in the container (a pin, no local seed disk), early-01 still local.
        target = appliance.data_dir / "target"
        assert list(target.glob("*/*/azure.json")) and not list(target.glob("*/*/disk*/seed.img"))[1:]
        assert appliance.export("early-01", "latest", tmp_path / "e").read_bytes() == early_disk.read_bytes()

        # A page changed in the account: the next point that holds it fails its check on export, one line, no file.
        seed, offset = asyncio.run(_tamper_last_block(azurite, "replicas"))
        assert offset > 0
        with open(disk, "r+b") as f:  # a change at the start of the disk makes the next point
            f.write(b"\x5a" * 4096)
            f.flush()
            os.fsync(f.fileno())
        t = time.time()
        p3 = appliance.point_after("web-01", t)
        (tmp_path / "f").mkdir()
        res = appliance.cli("vm", "export", "web-01", "--point", str(p3["id"]), "--format", "raw", "--out",
                            str(tmp_path / "f"))
        assert res.returncode != 0 and res.stderr.strip() == (
            "godwit: The export of web-01 stopped before its end: the engine could not read the point (`godwit "
            "events` says why)."), res.stderr
        assert not list((tmp_path / "f").iterdir())
        event = next(e for e in appliance.json("events") if e["code"] == "export-failed" and e["server"] == "web-01")
        assert f"offset {offset} of {seed.removesuffix('/seed')}" in event["message"]
        assert "fails its integrity check" in event["message"]

        # The credential: in the secret store's file only (the tests' secret store is the 0600 file).
        key = azurite.connection_string.split("AccountKey=")[1].split(";")[0]
        holders = [p for p in appliance.data_dir.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
        assert holders == [appliance.data_dir / "secrets.json"], holders
    finally:
        web.stop()
        early.stop()


def test_target_set_refuses_what_cannot_work_and_changes_nothing(appliance: Appliance, azurite: Azurite,
                                                                 tmp_path: Path) -> None:
    """A wrong key, a bad container name, a URL that is not one, a missing file, nothing listening: one line each,
    and the target stays local."""
    wrong = tmp_path / "wrong"
    wrong.write_text(azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA"))
    dead_port = azurite.port + 1  # nothing listens there (ports are handed out once per run)
    dead = tmp_path / "dead"
    dead.write_text(azurite.connection_string.replace(f":{azurite.port}/", f":{dead_port}/"))
    cases = [
        (["--account-url", azurite.account_url, "--container", "replicas", "--connection-string-file", str(wrong)],
         "The storage account refused the credential for container replicas"),
        (["--account-url", azurite.account_url, "--container", "Bad_Name", "--connection-string-file", str(wrong)],
         "'Bad_Name' is not a container name"),
        (["--account-url", "ftp://x", "--container", "replicas", "--sas-file", str(wrong)],
         "'ftp://x' is not a storage account URL"),
        (["--account-url", azurite.account_url, "--container", "replicas", "--sas-file", str(tmp_path / "none")],
         "Cannot read credential file"),
        (["--account-url", azurite.account_url, "--container", "replicas"],
         "Give the credential in one file"),
        (["--account-url", f"http://127.0.0.1:{dead_port}/devstoreaccount1", "--container", "replicas",
          "--connection-string-file", str(dead)], "cannot be reached"),
    ]
    for args, said in cases:
        res = appliance.cli("target", "set", "azure", *args, timeout=150)
        assert res.returncode != 0 and said in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert appliance.json("target", "show")["kind"] == "local"


@pytest.mark.timeout(400)
def test_an_outage_of_the_account_is_ridden_out(appliance: Appliance, tmp_path: Path) -> None:
    """Azurite (its data on disk) stopped for 60 s while the source keeps changing: the server shows
    target-unreachable with a sentence, the changes wait in the cache, and once Azurite is back the backlog
    drains by itself and the newest point is the source byte for byte."""
    azurite = Azurite(tmp_path / "azurite-logs", directory=tmp_path / "azurite-data").start()
    disk = appliance.root / "db.img"
    fill_disk(disk, 8 * MiB, seed=5)
    mob = Mobility(appliance, "db-01", disks=[disk]).start()
    try:
        wait_for(lambda: appliance.servers().get("db-01"), what="registration")
        _set_azure(appliance, azurite, "outage", tmp_path)
        appliance.enable("db-01")
        wait_for(lambda: appliance.servers()["db-01"]["state"] == "protected", timeout=90,
                 what="the initial replication into Azurite")

        azurite.stop()
        began = time.monotonic()
        for seed in range(6, 9):  # the source keeps writing through the outage
            change_disk(disk, seed=seed, writes=4)
            time.sleep(5)
        server = wait_for(lambda: (s := appliance.servers()["db-01"])["health_cause"] == "target-unreachable" and s,
                          timeout=60, what="target-unreachable")
        assert "The target storage does not answer since" in server["health_detail"]
        assert "wait safely in the cache" in server["health_detail"]
        assert list((appliance.data_dir / "cache").rglob("*.seg"))  # the changes, durable on the appliance
        time.sleep(max(0.0, 60 - (time.monotonic() - began)))

        azurite.start()
        t = time.time()
        final = disk.read_bytes()
        p = appliance.point_after("db-01", t, timeout=120)
        wait_for(lambda: appliance.servers()["db-01"]["health_cause"] != "target-unreachable", timeout=60,
                 what="the cause to clear")
        assert appliance.export("db-01", p["id"], tmp_path / "after").read_bytes() == final
        assert not list((appliance.data_dir / "cache").rglob("refused/*.seg"))
    finally:
        mob.stop()
        azurite.stop()
