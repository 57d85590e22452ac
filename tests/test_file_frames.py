"""The file-transfer frames and the file notice (docs/PROTOCOL.md 4.4) against tests/vectors/files-v1.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securecomm.crypto import stream
from securecomm.server.files import offer_args
from securecomm.store.files import FileRefused
from securecomm.wire import protocol as P
from securecomm.wire.files import FileAck, FileData, FileNotice, FilePut, valid_name
from securecomm.wire.frames import FrameDecoder

VECTORS = json.loads((Path(__file__).parent / "vectors" / "files-v1.json").read_text())


def _event(case):
    fid = bytes.fromhex(case["file_id"])
    if case["type"] == "FILE_ACK":
        return FileAck(fid, case["received"], case["complete"])
    cls = FilePut if case["type"] == "FILE_PUT" else FileData
    return cls(fid, case["offset"], bytes.fromhex(case["data"]))


@pytest.mark.parametrize("case", VECTORS["frames"], ids=lambda c: c["type"])
def test_frame_vector(case):
    event = _event(case)
    assert P.encode_event(event).hex() == case["frame"]
    dec = FrameDecoder()
    dec.receive_data(bytes.fromhex(case["frame"]))
    payload = dec.next_frame()
    assert payload is not None and P.decode_payload(payload) == event


@pytest.mark.parametrize("case", VECTORS["bad"], ids=lambda c: c["why"])
def test_bad_frame_vector(case):
    with pytest.raises(P.ProtocolError) as e:
        P.decode_payload(bytes.fromhex(case["payload"]))
    assert e.value.code == P.ErrorCode.BAD_FRAME


@pytest.mark.parametrize("case", VECTORS["notices"], ids=lambda c: c.get("why", "ok"))
def test_notice_vector(case):
    body = bytes.fromhex(case["body"])
    assert FileNotice.is_notice(body)
    if case["expect"] == "ok":
        notice = FileNotice.decode(body)
        assert (notice.file_id.hex(), notice.name, notice.size) == (case["id"], case["name"], case["size"])
        assert notice.stream_size == case["stream_size"] and notice.early == case["early"]
        assert notice.encode() == body
    else:
        with pytest.raises(P.ProtocolError):
            FileNotice.decode(body)


@pytest.mark.parametrize("case", VECTORS["offers"], ids=lambda c: c["why"])
def test_offer_vector(case):
    """file_offer's sha256 is optional (PROTOCOL.md 4.4): without it the server checks no digest."""
    ev = P.Request(1, "file_offer", case["args"])
    if case["expect"] == "ok":
        to, size, digest, file_id = offer_args(ev)
        assert (to, size) == (case["args"]["to"], case["args"]["size"])
        assert digest == (bytes.fromhex(case["args"]["sha256"]) if case["checks_digest"] else b"")
        assert file_id == (bytes.fromhex(case["args"]["file_id"]) if "file_id" in case["args"] else None)
    else:
        with pytest.raises(FileRefused) as e:
            offer_args(ev)
        assert e.value.kind == case["expect"]


@pytest.mark.parametrize("case", VECTORS["stream_sizes"], ids=lambda c: f"{c['kem']}-{c['body_length']}")
def test_stream_size_vector(case):
    """What a sender offers before sealing is the exact length of the stream it then sends."""
    kem = None if case["kem"] == "version-2" else case["kem"]  # 2.6.1: no HPKE part
    assert stream.sealed_size(case["body_length"], kem) == case["stream_size"]


def test_stream_size_of_the_stream_vectors():
    """The same formula against the byte-for-byte streams of stream-v1.json (section 2.6)."""
    import base64

    streams = json.loads((Path(__file__).parent / "vectors" / "stream-v1.json").read_text())["streams"]
    checked = 0
    for case in streams:
        if case["expect"] == "ok" and "body" in case:
            length = len(bytes.fromhex(case["body"]))
            assert len(base64.b64decode(case["stream_b64"])) == stream.sealed_size(length, case["recipient"]["kem"])
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\\b", "x\x00", "tab\there", "é" * 128])
def test_names_that_are_not_a_base_name(name):
    assert not valid_name(name)


def test_a_plain_name_is_fine():
    assert valid_name("photo 2026-11-28.jpg") and valid_name("résumé.pdf")


def test_notice_line_names_file_size_and_fetch_command():
    from securecomm.client.files import describe

    notice = FileNotice(bytes(range(16)), "photo.jpg", 3 * 1024 * 1024, bytes(32), 3 * 1024 * 1024 + 600,
                        bytes(32), bytes(32))
    assert describe(notice) == "[file] photo.jpg (3.0 MiB): securecomm fetch 000102030405060708090a0b0c0d0e0f"
