"""The device tables (docs/PROTOCOL.md 6): migration 6 of store/db.py. Only SQL here, so that
importing the schema loads no cryptography."""

from __future__ import annotations

#: Migration 6 of store/db.py: user keys, devices, prekeys and pairings.
MIGRATION = """
    CREATE TABLE user_keys (
        user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
        user_key BLOB NOT NULL,
        counter INTEGER NOT NULL,
        device_list BLOB NOT NULL
    );
    CREATE TABLE devices (
        device_id BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        cert BLOB NOT NULL,
        name TEXT NOT NULL,
        added_ms INTEGER NOT NULL,
        last_seen_ms INTEGER,
        max_prekey_id INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_by_user ON devices (user_id);
    CREATE TABLE prekeys (
        device_id BLOB NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
        kind INTEGER NOT NULL CHECK (kind IN (1, 2)),
        prekey_id INTEGER NOT NULL,
        prekey BLOB NOT NULL,
        PRIMARY KEY (device_id, kind, prekey_id)
    );
    CREATE TABLE pairings (
        digest BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        device_id BLOB NOT NULL,
        identity BLOB NOT NULL,
        name TEXT NOT NULL,
        expires_ms INTEGER NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        approval BLOB
    );
    CREATE INDEX pairings_by_device ON pairings (device_id)
"""

#: Migration 7 of store/db.py: one mailbox per device (6.7). A version-2 DIRECT is stored for the one
#: device its header names (`recipient_device`; NULL for version-1 mail, which stays per account);
#: its id is remembered per (sender device, recipient device, msg_id), so a fan-out of one message
#: to several devices of one account is not taken for a retry. Removed devices are remembered (their
#: identity) so that a removed device's LOGIN_KEY is told DEVICE_REMOVED, not "unknown key".
MIGRATION_7 = """
    ALTER TABLE mailbox ADD COLUMN recipient_device BLOB;
    ALTER TABLE mailbox ADD COLUMN sender_device BLOB;
    CREATE TABLE device_direct_ids (
        sender_device BLOB NOT NULL,
        recipient_device BLOB NOT NULL,
        msg_id BLOB NOT NULL,
        sha256 BLOB NOT NULL,
        stored_at_ms INTEGER NOT NULL,
        PRIMARY KEY (sender_device, recipient_device, msg_id)
    );
    CREATE INDEX device_direct_ids_by_age ON device_direct_ids (stored_at_ms);
    CREATE TABLE removed_devices (
        device_id BLOB PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        identity BLOB NOT NULL,
        removed_ms INTEGER NOT NULL
    );
    CREATE INDEX removed_devices_by_user ON removed_devices (user_id)
"""
