"""`securecomm keygen`: identities on disk, public lines, passphrases."""

from __future__ import annotations

import json
import os
import stat

import pytest

from securecomm.crypto import identity as ident
from securecomm.errors import AuthError, FilePermissionError, FormatError


@pytest.mark.parametrize("kem", ["mlkem768-x25519", "x25519", "p256"])
def test_keygen_writes_keys_with_safe_modes(sc, home, kem):
    result = sc("keygen", "--kem", kem, "--name", "alice")
    assert result.exit_code == 0, result.output
    key, pub = home / "identities" / "alice.key", home / "identities" / "alice.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    line = result.stdout.strip().splitlines()[0]
    public = ident.PublicIdentity.from_line(line)
    assert public.kem == kem
    loaded = ident.load(key)
    assert loaded.public == public
    assert public.fingerprint_text in result.output


def test_keygen_refuses_to_overwrite(sc, home):
    assert sc("keygen").exit_code == 0
    before = (home / "identities" / "default.key").read_bytes()
    result = sc("keygen")
    assert result.exit_code == 10
    assert (home / "identities" / "default.key").read_bytes() == before
    assert sc("keygen", "--force").exit_code == 0
    assert (home / "identities" / "default.key.bak").read_bytes() == before


def test_show_prints_existing_identity_as_json(sc, home):
    created = sc("keygen", "--kem", "x25519").stdout.strip().splitlines()[0]
    os.chmod(home / "identities" / "default.key", 0o000)  # --show must not need the private key
    result = sc("keygen", "--show", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["identity"] == created
    assert data["kem"] == "x25519"
    assert data["fingerprint"] == ident.PublicIdentity.from_line(created).fingerprint_text


def test_passphrase_file_encrypts_and_wrong_passphrase_fails(sc, home, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("correct horse battery staple\n")
    pw.chmod(0o644)  # readable by others: refused like such a key (the new-user check: it was used silently)
    refused = sc("keygen", "--passphrase-file", str(pw))
    assert refused.exit_code == 4 and "a passphrase file must not be accessible by others" in refused.output
    assert not (home / "identities" / "default.key").exists()
    pw.chmod(0o600)
    assert sc("keygen", "--passphrase-file", str(pw)).exit_code == 0
    key = home / "identities" / "default.key"
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    assert b"correct horse" not in key.read_bytes()
    ident.load(key, b"correct horse battery staple")
    with pytest.raises(AuthError):
        ident.load(key, b"wrong")
    with pytest.raises(AuthError):
        ident.load(key, None)


def test_passphrase_prompt_twice(sc, home):
    result = sc("keygen", "--passphrase", input="s3cret-pass\ns3cret-pass\n")
    assert result.exit_code == 0, result.output
    ident.load(home / "identities" / "default.key", b"s3cret-pass")


def test_group_readable_identity_is_refused(sc, home):
    sc("keygen")
    key = home / "identities" / "default.key"
    os.chmod(key, 0o640)
    with pytest.raises(FilePermissionError) as e:
        ident.load(key)
    assert "chmod 600" in e.value.hint


@pytest.mark.parametrize("name", ["", "UPPER", "../evil", ".hidden", "x" * 33])
def test_bad_identity_names(sc, name):
    assert sc("keygen", "--name", name).exit_code == 2


def test_identity_line_round_trip_and_strict_parse():
    public = ident.PrivateIdentity.generate("x25519").public
    assert ident.PublicIdentity.from_line(public.line) == public
    assert ident.PublicIdentity.decode(public.encode()) == public
    for bad in [public.line[:-1], public.line + "A", public.line.replace("x25519", "x448"),
                "ssh-ed25519 AAAA", public.line.replace(":1:", ":2:")]:
        with pytest.raises(FormatError):
            ident.PublicIdentity.from_line(bad)
    for bad in [public.encode()[:-1], public.encode() + b"\0", b"\x09" + public.encode()[1:], b""]:
        with pytest.raises(FormatError):
            ident.PublicIdentity.decode(bad)
