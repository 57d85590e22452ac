"""One exception root for everything securecomm reports to a user.

Each subclass carries the exit code the CLI returns for it; the table in the
README is generated from `EXIT_CODES` below (tests check they agree). Messages
are lowercase, with no trailing period, and never contain secrets: no
passwords, no key bytes, no message bodies. Crypto failures are deliberately
opaque (`IntegrityError("envelope does not verify")`) so that no error becomes
an oracle for an attacker.
"""

from __future__ import annotations


class SecurecommError(Exception):
    """something went wrong"""

    exit_code = 1

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        super().__init__(message or self.__doc__ or "error")
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(SecurecommError):
    """bad usage or bad value on the command line"""

    exit_code = 2


class NotFoundError(SecurecommError):
    """a file, identity, user or message does not exist"""

    exit_code = 3


class FileGoneError(NotFoundError):
    """the server has no such file (file_get refused): unlike a local NotFoundError, the file's key can go"""


class FilePermissionError(SecurecommError):
    """a file has unsafe permissions, or the operation is not permitted"""

    exit_code = 4


class UnsafePermissionsError(FilePermissionError):
    """a private file (a key) that group or others may read: this machine's problem, not the peer's, so a
    message that needs the key is left on the server, never rejected"""


class AuthError(SecurecommError):
    """authentication failed"""

    exit_code = 5


class IntegrityError(SecurecommError):
    """data failed an integrity check (signature, digest, decryption or format)"""

    exit_code = 6


class FormatError(IntegrityError):
    """malformed input: wrong length, type, version or layout"""


class NotAnEnvelopeError(FormatError):
    """input is not a securecomm envelope"""


class TruncatedError(FormatError):
    """input is truncated"""


class OversizedError(FormatError):
    """input is larger than the maximum size"""


class TrailingDataError(FormatError):
    """input has unexpected bytes after its end"""


class VersionError(FormatError):
    """unsupported format version"""


class UnknownSuiteError(FormatError):
    """unknown or unsupported cipher suite"""


class ProtocolError(SecurecommError):
    """the wire protocol was broken"""

    exit_code = 6

    #: The wire ERROR code this calls for (a wire.messages.ErrorCode value; an int here because
    #: errors.py sits below wire/). 1 is BAD_FRAME.
    def __init__(self, message: str | None = None, code: int = 1, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class LocalProtocolError(ProtocolError):
    """this side misused the protocol: a frame it may not send now (a bug, or the connection is closed)"""

    exit_code = 1


class RemoteProtocolError(ProtocolError, FormatError):
    """the peer broke the protocol"""


class FrameTooLarge(RemoteProtocolError, OversizedError):
    """frame is larger than the maximum frame size"""


class SignatureError(IntegrityError):
    """signature does not verify"""


class DecryptError(IntegrityError):
    """decryption failed: the ciphertext or its tag was altered, or the key is wrong"""


class DigestError(IntegrityError):
    """the SHA-256 digest of the body does not match"""


class ChangedKeyError(IntegrityError):
    """a contact's key has changed"""


class DowngradeError(IntegrityError):
    """a server answered an older protocol than this client offered, or without the devices it needs"""


class WrongRecipientError(IntegrityError):
    """the envelope is addressed to another recipient"""


class UnknownSenderError(AuthError):
    """the sender is not a known identity"""


class SenderMismatchError(SignatureError):
    """the envelope does not verify as sent by the identity the user named (decrypt --from): a
    verification failure like a bad signature (exit 6), not an unknown key (5)"""


class NetworkError(SecurecommError):
    """could not reach the server, or the connection broke"""

    exit_code = 7


class SessionReplacedError(NetworkError):
    """a newer login took this session's place (the account was at its session limit): reconnecting may help"""


class ShuttingDownError(NetworkError):
    """the server is shutting down (a planned restart); retry shortly"""


class StoreUnavailableError(NetworkError):
    """the database server cannot be reached; retry shortly"""


class StoreAuthError(StoreUnavailableError):
    """the database server refused the login (password or user): exit 5 at start; a relay running
    already treats it as the database unavailable and retries (the password may be fixed meanwhile)"""

    exit_code = 5


class TLSError(NetworkError):
    """the TLS handshake failed or the server is not trusted"""

    exit_code = 8


class RefusedError(SecurecommError):
    """the server refused the request"""

    exit_code = 9


class TooLargeError(RefusedError):
    """the message is larger than the limit"""


class NotListedError(RefusedError):
    """the server refused a message sealed to a device (or key) it does not list for the recipient
    (WRONG_RECIPIENT): a copy sealed to a claim made ahead reached a device removed since (6.13)"""


class SessionLimitError(RefusedError):
    """the account has as many sessions as the server allows"""


class BusyError(RefusedError):
    """server busy; try again shortly"""


class KeyReplaceError(RefusedError):
    """the account already has another device key registered"""


class ExpiredError(RefusedError):
    """the message waited unread longer than the server keeps mail, and was dropped"""


class SchemaVersionError(UsageError):
    """the database schema does not match this version of securecomm"""


class ExistsError(SecurecommError):
    """a file already exists and would be overwritten"""

    exit_code = 10


class NotDeliveredYetError(SecurecommError):
    """stored on the server, but no delivery receipt came in time (send --wait): the message is not
    lost and the server is reachable, so neither a network error (7) nor a refusal (9)"""

    exit_code = 11


class InterruptedByUser(SecurecommError):
    """interrupted"""

    exit_code = 130


# -- devices, prekeys and pairing (docs/PROTOCOL.md section 6) -------------------
class NotUserKeyError(SignatureError):
    """the device list or certificate is not signed by the user's key"""


class StaleDeviceListError(IntegrityError):
    """the device list is older than one already seen (a replayed list)"""


class PrekeySignatureError(SignatureError):
    """the prekey's signature does not verify under its device key"""


class ReplayedPrekeyError(IntegrityError):
    """the one-time prekey was already used or never existed (a replay)"""


class NoPrekeyError(IntegrityError):
    """the message is sealed to a long-term key, not to a prekey"""


class DeviceRemovedError(AuthError):
    """the device was removed from its user's device list"""


class PairingError(RefusedError):
    """the pairing code was refused"""


class PairingUnknownError(PairingError):
    """the pairing code is unknown"""


class PairingExpiredError(PairingError):
    """the pairing code has expired"""


class PairingUsedError(PairingError):
    """the pairing code was already used"""


#: Exit code -> meaning; documented in README.md (a test keeps them in step).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "unexpected error (rerun with -v for a traceback)",
    2: ("usage error or bad option value (also a PostgreSQL `--db URL` or a `--bus` without the cluster extra "
        "installed)"),
    3: "not found: file, identity, user or server profile",
    4: ("permission: unsafe key-file mode, or an admin-only request (also `db migrate` by a PostgreSQL user that "
        "may not create tables)"),
    5: ("authentication failed: wrong password, locked account, unknown key (also an envelope whose sender "
        "no `--from`, contact or identity of yours names; and PostgreSQL refusing a `--db URL` login)"),
    6: ("integrity: bad signature (also an envelope not sent by the `--from` sender), digest, decryption or "
        "malformed data"),
    7: "network: connection refused, timed out or dropped",
    8: "TLS: handshake failed, untrusted or changed server certificate",
    9: ("refused: over a limit (message size, full mailbox, stored messages to the server, rate), "
        "stale or misaddressed message"),
    10: ("already exists: a file that would be overwritten (use --force), a user name that is taken, a database "
         "a running `serve` holds (`backup restore`: stop the server first)"),
    11: "not delivered yet: `send --wait` saw no delivery receipt within --timeout (the message stays stored)",
    130: "interrupted: Ctrl-C, or Ctrl-D or 'no' at a prompt (nothing was changed)",
}
