"""Maintainer tool: make the vendor's licence key pair and issue licence files (see docs/licence.md).

    python tools/issue_licence.py keygen --out DIR [--name NAME]
    python tools/issue_licence.py issue --key PRIVATE.pem --appliance-id ID --licensee NAME
                                        [--max-servers N] (--days N | --perpetual) --out FILE

``keygen`` writes ``NAME.pem`` (the private key, mode 0600: keep it off the appliance and out of the
repository) and ``NAME.pub`` (the public key; the appliance's copy is
``resources/licence/vendor-ed25519.pub``). ``issue`` signs a licence for one appliance; the format
is :func:`engine.licence.encode_licence`'s. Errors exit 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from engine.licence import DAY, Licence, decode_licence, encode_licence


class ToolError(Exception):
    """Something the maintainer must fix; shown as one line."""


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start; never overwrite a key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise ToolError(f"{path} exists already: move it away first (a key is never overwritten).") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def keygen(out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    for path in (out / f"{name}.pem", out / f"{name}.pub"):
        if path.exists():
            raise ToolError(f"{path} exists already: move it away first (a key is never overwritten).")
    _write_new(out / f"{name}.pem", private, 0o600)
    _write_new(out / f"{name}.pub", public, 0o644)
    print(f"Private key: {out / f'{name}.pem'} (0600; keep it secret and out of the repository)")
    print(f"Public key:  {out / f'{name}.pub'} (ship it as resources/licence/vendor-ed25519.pub)")


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ToolError(f"{path} cannot be read ({exc.strerror or exc}).") from exc
    except (ValueError, TypeError) as exc:
        raise ToolError(f"{path} is not an unencrypted PEM private key ({exc}).") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ToolError(f"{path} is not an Ed25519 key: make one with `keygen`.")
    return key


def issue(args: argparse.Namespace) -> None:
    key = load_private_key(args.key)
    try:
        appliance_id = str(uuid.UUID(args.appliance_id.strip()))
    except ValueError as exc:
        raise ToolError(f"{args.appliance_id!r} is not an appliance id (a UUID, as `godwit setup show` shows "
                        "it).") from exc
    licensee = args.licensee.strip()
    if not 0 < len(licensee) <= 200 or not licensee.isprintable():
        raise ToolError("--licensee must be 1 to 200 printable characters.")
    if args.max_servers is not None and args.max_servers < 1:
        raise ToolError("--max-servers must be at least 1 (leave it out for any number).")
    if args.days is not None and args.days < 1:
        raise ToolError("--days must be at least 1.")
    now = time.time()
    licence = Licence(licence_id=args.licence_id or str(uuid.uuid4()), appliance_id=appliance_id, licensee=licensee,
                      max_servers=args.max_servers, issued_at=now,
                      expires_at=None if args.perpetual else now + args.days * DAY)
    text = encode_licence(licence, key)
    assert decode_licence(text, key.public_key()) == licence  # the appliance will read what was meant
    try:
        _write_new(args.out, text.encode(), 0o644)
    except OSError as exc:
        raise ToolError(f"{args.out} cannot be written ({exc.strerror or exc}).") from exc
    until = "without end" if licence.expires_at is None else time.strftime(
        "until %Y-%m-%d %H:%M UTC", time.gmtime(licence.expires_at))
    servers = "any number of servers" if licence.max_servers is None else f"up to {licence.max_servers} servers"
    print(f"Licence {licence.licence_id} for {licensee} on appliance {appliance_id}: {servers}, {until} -> {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Make the vendor's licence key pair and issue Godwit licence files.")
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keygen", help="write a new Ed25519 key pair")
    k.add_argument("--out", type=Path, required=True, help="directory for NAME.pem (0600) and NAME.pub")
    k.add_argument("--name", default="godwit-vendor-ed25519", help="file name without extension")
    i = sub.add_parser("issue", help="sign a licence file for one appliance")
    i.add_argument("--key", type=Path, required=True, help="the vendor's private key (PEM)")
    i.add_argument("--appliance-id", required=True, help="the appliance's id (`godwit setup show`)")
    i.add_argument("--licensee", required=True, help="who the licence is for, as the console shows it")
    i.add_argument("--max-servers", type=int, help="servers that may replicate at once (default: any number)")
    i.add_argument("--licence-id", help="default: a new UUID")
    ends = i.add_mutually_exclusive_group(required=True)
    ends.add_argument("--days", type=int, help="the licence ends this many days from now")
    ends.add_argument("--perpetual", action="store_true", help="the licence does not end")
    i.add_argument("--out", type=Path, required=True, help="the licence file to write (not overwritten)")
    args = parser.parse_args(argv)
    try:
        if args.command == "keygen":
            keygen(args.out, args.name)
        else:
            issue(args)
    except ToolError as exc:
        print(f"issue_licence: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
