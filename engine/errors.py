"""Errors the engine reports to admins, mobility services and the console.

Every error a user can see is an :class:`EngineError` with a stable ``code`` and a message that
says what happened and what to do. Third-party exceptions are translated where they enter the
engine; nothing classifies errors by their text.
"""

from __future__ import annotations

from typing import ClassVar


class EngineError(Exception):
    """Root of every error the engine shows to a person."""

    code: ClassVar[str] = "engine-error"
    #: HTTP status used when the error crosses the admin API or a port.
    status: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- set-up and configuration -------------------------------------------------------------
class ConfigError(EngineError):
    code = "config-invalid"
    status = 400


class PortError(ConfigError):
    code = "port-unavailable"


class DataDirInUse(EngineError):
    code = "data-dir-in-use"
    status = 409


class SecretStoreError(EngineError):
    code = "secret-store"


# --- talking to the engine ------------------------------------------------------------------
class EngineNotRunning(EngineError):
    code = "engine-not-running"
    status = 503


class ProtocolError(EngineError):
    """A peer sent something that is not the protocol."""

    code = "bad-request"
    status = 400


class VersionMismatch(ProtocolError):
    """A peer speaks a major version of a link protocol that this program does not."""

    code = "protocol-version"
    status = 400


class NotFound(EngineError):
    code = "not-found"
    status = 404


class UnknownServer(NotFound):
    code = "unknown-server"


# --- registration and source servers ----------------------------------------------------------
class RegistrationRefused(EngineError):
    code = "registration-refused"
    status = 403


class WrongPassphrase(RegistrationRefused):
    code = "wrong-passphrase"


class TooManyAttempts(RegistrationRefused):
    code = "too-many-attempts"
    status = 429


class NameTaken(RegistrationRefused):
    code = "name-taken"
    status = 409


class Revoked(EngineError):
    code = "registration-revoked"
    status = 403


class CertificateRequired(EngineError):
    code = "certificate-required"
    status = 401


class ApplianceUnreachable(EngineError):
    code = "appliance-unreachable"
    status = 503


class FingerprintMismatch(EngineError):
    code = "fingerprint-mismatch"


# --- the data port ------------------------------------------------------------------------------
class OutOfOrder(ProtocolError):
    code = "out-of-order"
    status = 409


class WaitingForEarlier(EngineError):
    """A batch that came ahead of its turn was not taken because a batch before it has not been (yet):
    the sender sends that one again first, then this one."""

    code = "waiting-for-earlier"
    status = 503


class EpochChanged(EngineError):
    """The sender works for an earlier (or later) enabling of replication than the appliance."""

    code = "epoch-changed"
    status = 409


class NotReplicating(EngineError):
    code = "not-replicating"
    status = 403


class CacheFull(EngineError):
    """The process server refuses a batch for now: its cache is at its limit, or the data directory's
    file system is down to its reserve. The sender retries; nothing was stored."""

    code = "cache-full"
    status = 503


class DiskFull(EngineError):
    """The appliance cannot write its state database (SQLITE_FULL): the data directory's file system
    is full. Nothing was changed; the same request succeeds once space is freed."""

    code = "disk-full"
    status = 503


class TargetUnwritable(EngineError):
    """The target storage cannot be written (a probe failed, the account refused a request)."""

    code = "target-unwritable"
    status = 503


class TargetCorrupt(TargetUnwritable):
    """What the target storage returned fails the appliance's integrity check: it was changed outside the
    appliance."""

    code = "target-corrupt"
    status = 502


class TargetTaken(TargetUnwritable):
    """Another writer changed a seed disk's metadata since this appliance read it."""

    code = "target-taken"
    status = 409


class TargetUnreachable(OSError):
    """The target storage did not answer, or refused for a reason that passes (throttled, 5xx): segments wait
    in the cache and applying is retried (an :class:`OSError`, as a full local disk is)."""


class BadInput(EngineError):
    """A file or argument given by the admin cannot be used."""

    code = "bad-input"
    status = 400


# --- licence -------------------------------------------------------------------------------------
class LicenceRequired(EngineError):
    """The licence does not allow this (expired, or at its number of servers). What replicates goes on."""

    code = "licence-required"
    status = 403


class LicenceInvalid(BadInput):
    """A licence file that cannot be activated; nothing was changed."""

    code = "licence-invalid"


class BackupInvalid(BadInput):
    """An appliance backup that cannot be read (wrong passphrase, damaged, not a backup)."""

    code = "backup-invalid"



# --- agent updates -------------------------------------------------------------------------------
class UpdateError(EngineError):
    """An agent update that cannot be done; nothing was installed (or it was rolled back)."""

    code = "update-failed"
    status = 409


class FeedUnreachable(UpdateError):
    """The update feed did not answer (in time)."""

    code = "feed-unreachable"
    status = 503


class FeedInvalid(UpdateError):
    """The feed answered with metadata or a package that does not verify (tampered, rolled back, expired,
    mixed releases, an unknown key): refused, nothing installed."""

    code = "feed-invalid"
    status = 502


class Incompatible(UpdateError):
    """The versions asked for would not work together (the feed's compatibility record)."""

    code = "update-incompatible"

_BY_CODE: dict[str, type[EngineError]] = {}


def _index(cls: type[EngineError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(EngineError)


def from_code(code: str, message: str) -> EngineError:
    """Rebuild an error that crossed a process boundary as ``{"code", "message"}``."""
    return _BY_CODE.get(code, EngineError)(message)
