"""A device's own secrets on disk: its user key copy and its private prekeys (docs/PROTOCOL.md 6.5).

Theory of operation
-------------------
    <folder>/user.key              Ed25519 user key, PEM PKCS#8 (0600)
    <folder>/state.json            next prekey id, last-resort ids and retirement times, when one-time
                                   ids were first seen handed out (no secrets)
    <folder>/prekeys/1-<id>.key    one-time private prekey, raw bytes (0600)
    <folder>/prekeys/2-<id>.key    last-resort private prekey

One file per private prekey, so that deleting one is an unlink: nothing of it
stays in a file a later copy of the folder would hold (a database would keep
it in free pages or a journal). The file is overwritten with zeros and synced
before the unlink, so it is not left in the file's blocks either where the
file system writes in place. The id counter is saved *before* a key file is
written, so a crash can skip ids but never reuse one (the server refuses a
reused id as a replay).

Erasing a used one-time key before the ACK (docs/PROTOCOL.md 6.5) is `wipe`:
its file overwritten with zeros and synced, so the key is durably gone; the
file of zeros is unlinked after the ACK (`after_ack`). A file of zeros is no
key: `get` treats it as gone (and removes it), as after a crash in between.

`preload` reads and expands the next one-time keys (the server hands out the
lowest ids first) into memory after a message is acknowledged, so that
opening the next message does not wait for that (an ML-KEM key is expanded
from its seed: ~0.15 ms). Memory only ever holds keys whose file exists: a
key is used only while its file is there, and erasing drops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from securecomm.crypto import prekeys as K
from securecomm.crypto.devices import UserKey
from securecomm.crypto.envelope import SenderLookup
from securecomm.crypto.identity import PrivateIdentity
from securecomm.errors import FormatError, NotFoundError, SecurecommError
from securecomm.files import DIR_MODE, PRIVATE_MODE, ensure_dir, read_private


def _write_atomic(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write `path` whole or not at all, 0600; `exclusive` refuses an existing file."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if `path` exists: a key file is never overwritten
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _wipe(path: Path) -> bool:
    """Overwrite with zeros and sync the data (fdatasync: the size does not change); False if gone."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return False
    try:
        os.pwrite(fd, bytes(os.fstat(fd).st_size), 0)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return True


def _erase(path: Path) -> None:
    """Overwrite with zeros, sync, unlink."""
    if _wipe(path):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class DeviceKeys:
    def __init__(self, folder: Path, kem: str) -> None:
        self.folder = folder
        self.kem = kem
        self.prekey_dir = folder / "prekeys"
        ensure_dir(self.prekey_dir)
        os.chmod(folder, DIR_MODE)
        self.state = self._load_state()
        self._loaded: dict[tuple[int, int], K.PrivatePrekey] = {}  # see preload
        self._one_time_ids: list[int] | None = None  # held one-time ids, ascending, as far as we know
        self._wiped: set[tuple[int, int]] = set()  # zeroed and synced, to be unlinked (see wipe)

    # -- state ----------------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        path = self.folder / "state.json"
        if not path.exists():
            return {"next_prekey_id": 1, "last_resort": None, "retired": {}}
        data = json.loads(read_private(path))
        if not isinstance(data, dict) or not isinstance(data.get("next_prekey_id"), int):
            raise FormatError(f"{path} is not a device state file")
        return data

    def _save_state(self) -> None:
        _write_atomic(self.folder / "state.json", json.dumps(self.state, sort_keys=True).encode(), exclusive=False)

    def _take_ids(self, n: int) -> int:
        first = int(self.state["next_prekey_id"])
        if first + n >= 2**32:
            raise FormatError("this device has used up its prekey ids: reset it with user login")
        self.state["next_prekey_id"] = first + n
        self._save_state()
        return first

    # -- user key -------------------------------------------------------------------------
    def save_user_key(self, key: UserKey) -> None:
        pem = key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        _write_atomic(self.folder / "user.key", pem, exclusive=True)
        if self.state.pop("own_list_counter", None) is not None:  # counters are per user key
            self._save_state()

    def replace_user_key(self, key: UserKey) -> UserKey | None:
        """Save `key` in place of the one held (a pairing approved under a new user key, 6.4): the old
        file is kept as user.key.bak, as every replaced private key is. Returns the key replaced."""
        old = self.user_key()
        if old is not None and old.public.raw == key.public.raw:
            return None
        if old is not None:
            os.replace(self.folder / "user.key", self.folder / "user.key.bak")
        self.save_user_key(key)
        return old

    # -- waiting to be paired (no secrets: the code is shown on screen and good for one approval) --
    def set_pairing(self, user: str, code: str, expires_ms: int, name: str | None = None) -> None:
        self.state["pairing"] = {"user": user, "code": code, "expires_ms": expires_ms, "name": name}
        self._save_state()

    def clear_pairing(self) -> None:
        if self.state.pop("pairing", None) is not None:
            self._save_state()

    # -- the highest list of our own account this device signed or saw (a server restored from a backup
    # hands back an older one: a new list must still go above the newest any contact saw) --
    @property
    def own_counter(self) -> int:
        value = self.state.get("own_list_counter", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def saw_own_list(self, counter: int) -> None:
        if counter > self.own_counter:
            self.state["own_list_counter"] = counter
            self._save_state()

    def user_key(self) -> UserKey | None:
        path = self.folder / "user.key"
        if not path.exists():
            return None
        key = serialization.load_pem_private_key(read_private(path), None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise FormatError(f"{path} does not hold an Ed25519 user key")
        return UserKey(key)

    # -- prekeys ----------------------------------------------------------------------------
    def _path(self, kind: int, prekey_id: int) -> Path:
        return self.prekey_dir / f"{kind}-{prekey_id}.key"

    def _keep(self, key: K.PrivatePrekey) -> None:
        _write_atomic(self._path(key.kind, key.prekey_id), key.raw, exclusive=True)

    def new_one_time(self, device: PrivateIdentity, count: int) -> list[K.Prekey]:
        """Make, keep and sign `count` one-time prekeys; the signed ones go to the server."""
        batch = K.generate_batch(device, self._take_ids(count), count)
        for key in batch:
            self._keep(key)
        if self._one_time_ids is not None:
            self._one_time_ids += [key.prekey_id for key in batch]
        return [key.sign(device) for key in batch]

    def new_last_resort(self, device: PrivateIdentity, now_ms: int) -> K.Prekey:
        """A new last-resort prekey; the one it replaces is retired (kept for the grace period)."""
        key = K.PrivatePrekey.generate(K.LAST_RESORT, self._take_ids(1), device.kem, now_ms)
        self._keep(key)
        old = self.state.get("last_resort")
        if old is not None:
            self.state["retired"][str(old)] = now_ms
        self.state["last_resort"] = key.prekey_id
        self.state["last_resort_ms"] = now_ms
        self._save_state()
        return key.sign(device)

    def _read(self, kind: int, prekey_id: int) -> K.PrivatePrekey | None:
        path = self._path(kind, prekey_id)
        raw = read_private(path)
        if not any(raw):  # wiped, its unlink not done yet (or a crash in between): no key
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return K.PrivatePrekey.from_raw(kind, prekey_id, self.kem, raw, 0)

    def get(self, kind: int, prekey_id: int) -> K.PrivatePrekey | None:
        path = self._path(kind, prekey_id)
        if not path.exists() or (kind, prekey_id) in self._wiped:  # used (maybe by another session), never made
            self._loaded.pop((kind, prekey_id), None)
            return None
        loaded = self._loaded.get((kind, prekey_id))
        if loaded is not None:
            return loaded
        return self._read(kind, prekey_id)

    def _forget(self, key: K.PrivatePrekey) -> None:
        self._loaded.pop((key.kind, key.prekey_id), None)
        if key.kind == K.ONE_TIME and self._one_time_ids is not None and key.prekey_id in self._one_time_ids:
            self._one_time_ids.remove(key.prekey_id)

    def delete(self, key: K.PrivatePrekey) -> None:
        """Erase now: zeros, synced, unlinked."""
        self._forget(key)
        _erase(self._path(key.kind, key.prekey_id))

    def wipe(self, key: K.PrivatePrekey) -> None:
        """Erase before the ACK: zeros, synced (the key is durably gone); the unlink waits for after_ack."""
        self._forget(key)
        if _wipe(self._path(key.kind, key.prekey_id)):
            self._wiped.add((key.kind, key.prekey_id))

    def after_ack(self) -> None:
        """Unlink the files wiped before the ACK, then read the next keys ahead (preload)."""
        for kind, prekey_id in sorted(self._wiped):
            with contextlib.suppress(FileNotFoundError):
                self._path(kind, prekey_id).unlink()
        self._wiped.clear()
        self.preload()

    def _one_time_on_disk(self) -> list[int]:
        """The ids of the one-time private keys whose files are in the folder, ascending."""
        prefix = f"{K.ONE_TIME}-"
        with os.scandir(self.prekey_dir) as entries:
            return sorted(int(e.name[len(prefix):-4]) for e in entries if e.name.startswith(prefix)
                          and e.name.endswith(".key") and e.name[len(prefix):-4].isdigit())

    def preload(self, count: int = 4) -> int:
        """Load the `count` lowest-numbered one-time private prekeys into memory (see top); returns how
        many were read now. A key whose file is gone is dropped from memory."""
        if self._one_time_ids is None:
            self._one_time_ids = self._one_time_on_disk()
        wanted = self._one_time_ids[:count]
        for stale in [k for k in self._loaded if k[0] == K.ONE_TIME and k[1] not in wanted]:
            del self._loaded[stale]
        read = 0
        for prekey_id in wanted:
            if (K.ONE_TIME, prekey_id) in self._loaded:
                continue
            try:
                key = self._read(K.ONE_TIME, prekey_id)
            except (OSError, SecurecommError):  # gone (another session used it), or unreadable: get() decides
                key = None
            if key is None:
                self._one_time_ids.remove(prekey_id)
                continue
            self._loaded[(K.ONE_TIME, prekey_id)] = key
            read += 1
        return read

    def prune(self, now_ms: int) -> int:
        """Erase retired last-resort keys past their grace period; returns how many."""
        done = [pid for pid, when in self.state["retired"].items() if K.expired_last_resort(int(when), now_ms)]
        for pid in done:
            _erase(self._path(K.LAST_RESORT, int(pid)))
            del self.state["retired"][pid]
        if done:
            self._save_state()
        return len(done)

    def forget_handed_out(self, below: int, now_ms: int, keep_ms: int | None = K.UNUSED_ONE_TIME_MS) -> int:
        """Erase one-time private keys the server handed out and no one used (6.5): every id of ours
        under `below` (prekeys_status's `handed_out_below`). Each is kept `keep_ms` (UNUSED_ONE_TIME_MS, or
        longer where the server keeps mail longer: SERVER_HELLO's mailbox_ttl)
        from when this device first saw it so (mail sealed to it may still wait), at most
        HANDED_OUT_KEPT of them (the lowest go first); an id held again (a server restored from a
        backup) is no longer counted. Returns how many keys were erased."""
        ours = self._one_time_on_disk()
        out = {i for i in ours if i < below}
        before = dict(self.state.get("handed_out", {}))
        seen = {k: v for k, v in before.items() if int(k) in out}
        seen.update({str(i): now_ms for i in out if str(i) not in seen})
        marked = sorted(int(k) for k in seen)
        # keep_ms None: kept until the HANDED_OUT_KEPT bound only (a server that keeps mail for ever)
        erase = {i for i in marked if keep_ms is not None and now_ms - int(seen[str(i)]) >= keep_ms}
        erase.update(marked[: max(0, len(marked) - K.HANDED_OUT_KEPT)])
        for prekey_id in sorted(erase):
            self._loaded.pop((K.ONE_TIME, prekey_id), None)
            if self._one_time_ids is not None and prekey_id in self._one_time_ids:
                self._one_time_ids.remove(prekey_id)
            _erase(self._path(K.ONE_TIME, prekey_id))
            del seen[str(prekey_id)]
        if seen != before:
            self.state["handed_out"] = seen
            self._save_state()
        return len(erase)

    def erase_all(self) -> int:
        """This device was removed from its account's list: erase its user key copy (and the old one kept as
        user.key.bak) and every private prekey, zeros first. The id counter stays (ids are never reused).
        Returns how many files were erased (the new-user check: a device that removed itself kept the
        account's signing key it no longer had any use for)."""
        files = [p for p in (self.folder / "user.key", self.folder / "user.key.bak") if p.exists()]
        files += list(self.prekey_dir.glob("*.key"))
        for path in files:
            _erase(path)
        self._loaded.clear()
        self._one_time_ids = []
        self.state.update({"last_resort": None, "retired": {}, "handed_out": {}})
        self.state.pop("own_list_counter", None)
        self._save_state()
        return len(files)

    def held(self) -> list[Path]:
        return sorted(self.prekey_dir.glob("*.key"))

    def open(self, data: bytes | K.Envelope2, me: PrivateIdentity, senders: SenderLookup) -> K.Opened2:
        """Open a message sealed to one of our prekeys; a one-time key is erased once tried."""
        return K.open_v2(data, me, senders, self.get, on_tried=self.delete)


def pairing_of(folder: Path) -> dict[str, Any] | None:
    """The pairing this device waits for ({"user", "code", "expires_ms"}), read without creating
    anything; None when it waits for none."""
    path = folder / "state.json"
    try:
        data = json.loads(read_private(path)) if path.exists() else {}
    except (OSError, ValueError, SecurecommError):
        return None
    found = data.get("pairing") if isinstance(data, dict) else None
    return found if isinstance(found, dict) and isinstance(found.get("code"), str) else None


def held_user_key(folder: Path) -> UserKey | None:
    """The user key a device folder holds, read without creating anything (`status`); None if none."""
    path = folder / "user.key"
    if not path.exists():
        return None
    key = serialization.load_pem_private_key(read_private(path), None)
    return UserKey(key) if isinstance(key, ed25519.Ed25519PrivateKey) else None


def require_user_key(keys: DeviceKeys) -> UserKey:
    key = keys.user_key()
    if key is None:
        raise NotFoundError("this device has no user key", hint="approve it from another device: "
                            "securecomm devices approve CODE")
    return key
