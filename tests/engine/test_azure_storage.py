"""What only the ``azure`` backend has to show (the storage contract suite runs it too): the account never sees
plaintext, a page changed in the account is caught, and every way the account can fail is one line."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import uuid
from pathlib import Path

import pytest
from azure.storage.blob.aio import BlobServiceClient

from engine.codec import Block
from engine.errors import TargetUnwritable
from engine.protocol import BLOCK
from engine.storage import PointInfo, replica
from engine.storage.azure import SLOT, AzureLocation, AzureStorage, TargetCorrupt, TargetUnreachable
from engine.storage.local import LocalStorage
from tests.appliance import free_port
from tests.azurite import KEY, Azurite

SIZE = 8 * BLOCK + 3000


def _storage(tmp_path: Path, location: AzureLocation) -> AzureStorage:
    return AzureStorage(LocalStorage(tmp_path / "data"), location,
                        lambda server_id: hashlib.sha256(server_id.encode()).digest())


@pytest.fixture
def location(azurite: Azurite) -> AzureLocation:
    return AzureLocation(azurite.account_url, f"t-{uuid.uuid4().hex[:12]}", azurite.connection_string)


def _blobs(location: AzureLocation) -> dict[str, bytes]:
    """Every blob of the container, and every snapshot, as the account holds them."""
    async def read() -> dict[str, bytes]:
        async with BlobServiceClient.from_connection_string(location.credential) as service:
            container = service.get_container_client(location.container)
            out = {}
            async for b in container.list_blobs(include=["snapshots"]):
                blob = container.get_blob_client(b.name, snapshot=b.snapshot)
                out[f"{b.name}@{b.snapshot}"] = await (await blob.download_blob()).readall()
            return out

    return asyncio.run(read())


def test_the_account_never_sees_a_byte_of_plaintext(tmp_path: Path, location: AzureLocation) -> None:
    """Blocks, the point's snapshot and the metadata hold no plaintext; the point reads back as written."""
    storage = _storage(tmp_path, location)
    storage.probe_target()
    marker = b"GODWIT-PLAINTEXT-" * 64
    data = (marker * (BLOCK // len(marker) + 1))[:BLOCK]
    disk = storage.target_disk(replica("web-01", 1), 0, SIZE)
    disk.apply(1, [Block(0, BLOCK, data), Block(3 * BLOCK, BLOCK, data)], point=PointInfo(7, 1.0, "crash-consistent",
                                                                                          1.0))
    blobs = _blobs(location)
    assert len(blobs) == 3  # the seed, its snapshot (the point), the metadata
    for name, content in blobs.items():
        assert b"GODWIT-PLAINTEXT" not in content, name
        assert b"applied_seq" not in content, name  # the metadata is sealed too
    assert b"".join(c for _, c in storage.target_disk(replica("web-01", 1), 0, SIZE).read_point(7, BLOCK)
                    if c is not None) == data * 2


def test_a_page_changed_in_the_account_is_reported_never_returned(tmp_path: Path, location: AzureLocation) -> None:
    """One byte flipped, a block moved to another slot: both fail the check on reading, naming the block."""
    storage = _storage(tmp_path, location)
    storage.probe_target()

    async def tamper(r: str, change: str) -> None:
        async with BlobServiceClient.from_connection_string(location.credential) as service:
            seed = service.get_blob_client(location.container, f"{r}/disk0/seed")
            slot0 = await (await seed.download_blob(0, SLOT)).readall()
            if change == "flip":
                page = bytearray(slot0[:512])
                page[100] ^= 1
                await seed.upload_page(bytes(page), 0, 512)
            else:  # the first block's slot written over the second's
                await seed.upload_page(slot0, SLOT, SLOT)

    for epoch, change, offset, what in ((1, "flip", 0, "fails its integrity check"),
                                        (2, "move", BLOCK, "is not one the appliance wrote")):
        r = replica("web-01", epoch)
        storage.target_disk(r, 0, SIZE).apply(1, [Block(0, 2 * BLOCK, os.urandom(2 * BLOCK))],
                                              point=PointInfo(1, 1.0, "crash-consistent", 1.0))
        asyncio.run(tamper(r, change))
        with pytest.raises(TargetCorrupt) as caught:
            b"".join(c or b"" for _, c in storage.target_disk(r, 0, SIZE).read_point(None, BLOCK))
        assert f"offset {offset} of {r}/disk0" in caught.value.message and what in caught.value.message
        # The point was taken before: it reads back intact.
        assert sum(1 for _ in storage.target_disk(r, 0, SIZE).read_point(1, BLOCK)) == -(-SIZE // BLOCK)


def test_bad_credentials_are_one_line_that_says_what_to_give(tmp_path: Path, azurite: Azurite) -> None:
    """A wrong account key: one line naming the container and what to give, without the key."""
    wrong_key = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    storage = _storage(tmp_path, AzureLocation(azurite.account_url, "c-wrong", wrong_key))
    with pytest.raises(TargetUnwritable) as caught:
        storage.probe_target()
    assert "\n" not in caught.value.message
    refused = r"\((?:Authori[sz]ationFailure|AuthenticationFailed)\)"
    assert re.fullmatch(rf"The storage account refused the credential for container c-wrong of "
                        rf"{re.escape(azurite.account_url)} {refused}: give a connection string or SAS token that "
                        r"may .*", caught.value.message), caught.value.message
    assert "AccountKey" not in caught.value.message


def test_an_account_that_does_not_answer_is_unreachable_not_a_crash(tmp_path: Path, azurite: Azurite) -> None:
    """Nothing listens: an OSError (the log processor pauses and retries), within seconds, in one line."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/devstoreaccount1"
    dead = azurite.connection_string.replace(azurite.account_url, url)
    storage = _storage(tmp_path, AzureLocation(url, "c-dead", dead))
    began = time.monotonic()
    with pytest.raises(TargetUnreachable) as caught:
        storage.target_disk(replica("web-01", 1), 0, SIZE)
    assert time.monotonic() - began < 60
    assert "cannot be reached" in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_container_is_one_line(tmp_path: Path, location: AzureLocation) -> None:
    """Writing into a container that does not exist: one line with the account's reason."""
    storage = _storage(tmp_path, location)  # never probed: the container was not created
    with pytest.raises(TargetUnwritable) as caught:
        storage.target_disk(replica("web-01", 1), 0, SIZE).apply(1, [Block(0, BLOCK, bytes(BLOCK))])
    assert "The specified container does not exist" in caught.value.message and "\n" not in caught.value.message


class Killed(Exception):
    """The log processor dies here."""


@pytest.mark.parametrize("where", ["before the metadata", "after the snapshot"])
def test_a_crash_between_the_writes_and_the_metadata_is_mended_by_applying_again(
        tmp_path: Path, location: AzureLocation, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The pages written (and the point's snapshot taken) but the metadata not: applying the same segment again
    after a restart ends exact, with the point's snapshot reused, not doubled."""
    from engine.storage import azure

    storage = _storage(tmp_path, location)
    storage.probe_target()
    r = replica("web-01", 1)
    first, second = os.urandom(SIZE), os.urandom(2 * BLOCK)
    storage.target_disk(r, 0, SIZE).apply(1, [Block(0, SIZE, first)], point=PointInfo(1, 1.0, "crash-consistent", 1.0))
    point = PointInfo(2, 2.0, "crash-consistent", 2.0) if where == "after the snapshot" else None
    real = azure.AzureTargetDisk._save_meta

    def dies(self: azure.AzureTargetDisk) -> None:
        raise Killed

    monkeypatch.setattr(azure.AzureTargetDisk, "_save_meta", dies)
    with pytest.raises(Killed):
        storage.target_disk(r, 0, SIZE).apply(2, [Block(BLOCK, 2 * BLOCK, second)], point=point)
    monkeypatch.setattr(azure.AzureTargetDisk, "_save_meta", real)

    restarted = _storage(tmp_path, location).target_disk(r, 0, SIZE)
    assert restarted.applied_seq == 1 and [p.id for p in restarted.points()] == [1]
    restarted.apply(2, [Block(BLOCK, 2 * BLOCK, second)], point=point)
    again = _storage(tmp_path, location).target_disk(r, 0, SIZE)
    now = first[:BLOCK] + second + first[3 * BLOCK:]
    assert again.applied_seq == 2
    assert b"".join(c or bytes(BLOCK) for _, c in again.read_point(None, SIZE)) == now
    assert b"".join(c or bytes(BLOCK) for _, c in again.read_point(1, SIZE)) == first
    if point is not None:
        assert [p.id for p in again.points()] == [1, 2]
        assert b"".join(c or bytes(BLOCK) for _, c in again.read_point(2, SIZE)) == now
        snapshots = [n for n in _blobs(location) if n.startswith(f"{r}/disk0/seed@") and not n.endswith("@None")]
        assert len(snapshots) == 2  # point 1's and point 2's: the one the crash left was reused


def test_an_account_sas_token_is_enough(tmp_path: Path, azurite: Azurite, location: AzureLocation) -> None:
    """A SAS token (an account SAS for blobs: no account key on the appliance) passes the probe of an existing
    container, applies, snapshots, prunes and reads points back, as an admin's `--sas-file` would."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    _storage(tmp_path, location).probe_target()  # the container exists: made with the account key
    sas = generate_account_sas(
        "devstoreaccount1", KEY, ResourceTypes(container=True, object=True),
        AccountSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1))
    storage = _storage(tmp_path / "sas", AzureLocation(azurite.account_url, location.container, "?" + sas))
    assert "takes page blobs and snapshots" in storage.probe_target()
    data = os.urandom(BLOCK)
    disk = storage.target_disk(replica("web-01", 1), 0, SIZE)
    disk.apply(1, [Block(0, BLOCK, data)], point=PointInfo(1, 1.0, "crash-consistent", 1.0))
    disk.apply(2, [Block(BLOCK, BLOCK, data)], point=PointInfo(2, 2.0, "crash-consistent", 2.0))
    disk.delete_point(1)
    reopened = storage.target_disk(replica("web-01", 1), 0, SIZE)
    assert [p.id for p in reopened.points()] == [2]
    assert b"".join(c or bytes(BLOCK) for _, c in reopened.read_point(2, BLOCK))[:2 * BLOCK] == data * 2
