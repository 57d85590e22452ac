"""`securecomm send`, `securecomm status` and `securecomm chat`."""

from __future__ import annotations

import shutil
import sys
from typing import Any

import click

from securecomm.cli.context import (
    State,
    ask_trust,
    connection_options,
    emit_json,
    json_option,
    pass_state,
    profile_identity,
    run_client,
)


def _read_body(message: str, to: str | None = None) -> bytes:
    from securecomm.client.connection import message_too_large
    from securecomm.crypto.envelope import MAX_BODY_SIZE

    body = message.encode() if message != "-" else sys.stdin.buffer.read(MAX_BODY_SIZE + 1)
    if len(body) > MAX_BODY_SIZE:  # refused before connecting: exit 9, with the limit in the hint
        # to a user, any size goes as a file (new-user check: the hint said to split it)
        raise message_too_large(MAX_BODY_SIZE, hint=None if not to else
                                f"send it as a file, of any size: securecomm send --to {to} --file PATH")
    return body


@click.command(epilog="Examples:\n\n  securecomm send 'hello'\n\n  date | securecomm send - --json"
               "\n\n  securecomm send --to bob --wait 'end to end'\n\n  securecomm send --to bob --file report.pdf")
@click.argument("message", required=False)
@click.option("--to", "to", metavar="USER", help="Send end to end to USER instead of to the server.")
@click.option("--file", "file_path", metavar="PATH", type=click.Path(dir_okay=False),
              help="With --to: send the file PATH (any size; sealed, uploaded in chunks, resumed after a drop; "
                   "- reads stdin).")
@click.option("--wait", is_flag=True, help="With --to: wait for the recipient's signed delivery receipt.")
@click.option("--timeout", type=float, default=30, show_default=True,
              help="Seconds to get the server's receipt (one reconnect and resend included if the server "
                   "restarts), and then, with --wait, seconds to wait for the delivery receipt.")
@connection_options
@json_option
@pass_state
def send(state: State, message: str | None, to: str | None, file_path: str | None, wait: bool, timeout: float,
         server: str | None, ca: str | None, pin: str | None, passphrase_file: str | None, as_json: bool) -> None:
    """Send MESSAGE (or - for stdin) and print its receipt.

    To the server (default): sealed to the server's identity with HPKE, signed
    with your identity key, sent over TLS 1.3; exit 0 only when the server's
    receipt came back and its SHA-256 equals that of the message.

    With --to USER: sealed to USER's identity (pinned on first use), so the
    server only stores and forwards ciphertext until USER is online. USER may
    be yourself: a note to self, shown by your own `inbox`.

    With --to USER --file PATH (no MESSAGE): the file, of any size, sealed to
    USER in the streaming form, uploaded in chunks (resumed after a dropped
    connection), then announced to USER by a direct message; USER's `inbox`
    lists it and `securecomm fetch ID` downloads it.

    If the server shuts down or the connection drops before the receipt,
    send reconnects and resends the same envelope once within --timeout; the
    server answers a copy it already stored with its original receipt.
    """

    from securecomm.cli.context import warn
    from securecomm.client.login import connect_profile
    from securecomm.client.sending import send_to_server

    if file_path is not None or message is None:
        _send_file_checked(state, message, to, file_path, wait, timeout, as_json, passphrase_file,
                           server=server, ca=ca, pin=pin)
        return
    body = _read_body(message, to)
    identity = profile_identity(state, passphrase_file)
    if wait and not to:
        from securecomm.errors import UsageError

        raise UsageError("--wait needs --to USER")
    if to:
        _send_direct(state, identity, to, body, wait, timeout, as_json, server=server, ca=ca, pin=pin)
        return

    async def connect() -> Any:
        return await connect_profile(state.paths, identity, server=server, ca=ca, pin=pin, ask=ask_trust)

    receipt = run_client(send_to_server(connect, identity, body, timeout, warn))
    if as_json:
        emit_json({"status": "delivered", "id": receipt.msg_id.hex(), "sha256": receipt.sha256.hex(),
                   "stored_at_ms": receipt.stored_at_ms, "duplicate": receipt.duplicate})
        return
    click.echo(f"delivered {receipt.msg_id.hex()} sha256:{receipt.sha256.hex()}")


def _send_file_checked(state: State, message: str | None, to: str | None, file_path: str | None, wait: bool,
                       timeout: float, as_json: bool, passphrase_file: str | None, **conn: Any) -> None:
    from securecomm.cli.files import send_file
    from securecomm.errors import UsageError

    if file_path is None:
        # as Click says it when MESSAGE was required (it is optional now only because of --file)
        raise UsageError("missing argument 'MESSAGE'", hint="see: securecomm send --help")
    if message is not None or not to or wait:
        raise UsageError("--file takes no MESSAGE and needs --to USER (and no --wait)",
                         hint="securecomm send --to bob --file report.pdf")
    send_file(state, profile_identity(state, passphrase_file), to, file_path, max(timeout, 120), as_json, **conn)


@click.command(epilog="Examples:\n\n  securecomm status --json\n\n"
               "  securecomm --home /var/lib/securecomm status --server localhost:7443 --health")
@connection_options
@click.option("--health", is_flag=True, help="Only check that the server is up: TLS, then a ping; no login. "
              "Exit 0 if it answers, 7 if not, 8 if its certificate is not trusted.")
@json_option
@pass_state
def status(state: State, server: str | None, ca: str | None, pin: str | None, passphrase_file: str | None,
           health: bool, as_json: bool) -> None:
    """Connect with the saved profile and print a security report of the session.

    Like `openssl s_client -brief`, but for the whole stack: TLS version,
    cipher and key exchange, how the server was trusted, the HPKE suite
    messages use, whether each layer is post-quantum, and who you are.
    With --health, no profile or login is needed: for load balancers and
    monitoring (trust: --ca, --pin, known_servers, or the home's own CA).
    """
    if health:
        _health(state, server, ca, pin, as_json)
        return

    from securecomm.client.login import connect_profile
    from securecomm.client.report import relay_info, security_report

    identity = profile_identity(state, passphrase_file)

    async def go() -> dict[str, Any]:
        client, profile = await connect_profile(state.paths, identity, server=server, ca=ca, pin=pin, ask=ask_trust)
        async with client:
            report = security_report(client, profile, identity)
            if client.login is not None and client.login.prekeys is not None:  # a server that serves devices
                from securecomm.store.devicekeys import held_user_key

                held = held_user_key(state.paths.device_keys(profile.identity))
                report["user"]["user_key"] = held.public.fingerprint_text if held is not None else \
                    "none on this device (run: securecomm user login NAME)"
            report["relay"] = await relay_info(client)
            return report

    report = run_client(go())
    if as_json:
        emit_json(report)
        return
    from securecomm.cli.context import shown

    for key, value in report.items():
        if isinstance(value, dict):
            for k, v in value.items():
                click.echo(f"{key + '.' + k:28} {shown(v)}")
        else:
            click.echo(f"{key:28} {shown(value)}")


def _health(state: State, server: str | None, ca: str | None, pin: str | None, as_json: bool) -> None:
    from securecomm.client.health import check_health
    from securecomm.config import Profile

    if server is None:
        profile = Profile.load_optional(state.paths.profile)
        if profile is None:
            from securecomm.errors import UsageError

            raise UsageError("--health needs --server HOST:PORT (or a saved profile)")
        server, ca, pin = profile.server, ca or profile.ca, pin or profile.pin
    result = run_client(check_health(state.paths, server, ca=ca, pin=pin))
    if as_json:
        emit_json(result)
    else:
        click.echo(f"ok: {result['server']} answered a ping over {result['tls']} in {result['ms']} ms")


def _send_direct(state: State, identity: Any, to: str, body: bytes, wait: bool, timeout: float, as_json: bool,
                 **conn: Any) -> None:

    from securecomm.cli.context import warn
    from securecomm.client.login import connect_profile
    from securecomm.client.sending import DirectSend
    from securecomm.errors import ExpiredError, NotDeliveredYetError

    async def connect() -> Any:
        return await connect_profile(state.paths, identity, ask=ask_trust, **conn)

    async def go() -> tuple[Any, bytes, Any]:
        sender = DirectSend(connect, identity, state.paths, to, body)
        client, receipt = await sender.send(timeout, warn)
        try:
            delivered = None
            if wait:
                try:
                    delivered = await sender.wait_delivered(timeout)
                except ExpiredError:
                    if as_json:  # the status scripts read, then the error and exit code 9 as always
                        emit_json({"status": "expired", "id": sender.msg_id.hex(), "to": to.lower()})
                    raise
                except TimeoutError as e:
                    raise NotDeliveredYetError(f"stored, but no delivery receipt from {to} within {timeout:g}s",
                                               hint="the message stays on the server until they connect") from e
            return receipt, sender.msg_id, delivered
        finally:
            await sender.close(client)

    receipt, msg_id, delivered = run_client(go())
    if delivered is not None and not delivered.verified:
        from securecomm.errors import IntegrityError

        raise IntegrityError(f"the delivery receipt from {to} did not verify")
    if as_json:
        emit_json({"status": "delivered" if delivered else "stored", "id": msg_id.hex(), "to": to.lower(),
                   "envelope_sha256": receipt.sha256.hex(), "duplicate": receipt.duplicate})
        return
    if delivered:
        click.echo(f"delivered {msg_id.hex()} to {to.lower()} (signed receipt verified)")
    else:
        click.echo(f"stored {msg_id.hex()} for {to.lower()}")


@click.command(epilog="Examples:\n\n  securecomm inbox\n\n  securecomm inbox --follow --json")
@click.option("--follow", is_flag=True,
              help="Keep waiting for new messages, reconnecting after a server restart (Ctrl-C to stop).")
@click.option("--wait", "wait_s", type=float, default=1.0, show_default=True,
              help="Without --follow: seconds to wait for deliveries after connecting (inbox ends within "
                   "30 s in any case, even if the server keeps sending).")
@connection_options
@json_option
@pass_state
def inbox(state: State, follow: bool, wait_s: float, server: str | None, ca: str | None, pin: str | None,
          passphrase_file: str | None, as_json: bool) -> None:
    """Fetch and print pending direct messages, verifying each.

    Every message is checked (recipient, sender signature, decryption,
    SHA-256 digest) before it is printed and acknowledged; one that fails is
    reported on stderr and never printed. With --json, one object per line.
    """
    import asyncio

    from securecomm.client.events import (
        Alert,
        DirectMessage,
        cell_width,
        direct_head,
        now_text,
        printable,
        printable_body,
    )
    from securecomm.client.login import connect_profile
    from securecomm.client.messenger import Messenger

    identity = profile_identity(state, passphrase_file)
    failures = shown_count = held = 0
    # on a terminal, bodies are wrapped here (see printable_body); a pipe gets each line whole
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() and not as_json else None

    def show(ev: Any) -> None:
        nonlocal failures, shown_count, held
        if isinstance(ev, DirectMessage):
            shown_count += 1
            from securecomm.client.files import save_long_message, shown_body

            # a file: saved for `fetch ID` (not our own copy of one we sent: nothing to fetch here)
            body, notice, sent_to = shown_body(state.paths, ev, identity, state.command)
            if as_json:
                import json

                shown_file = {"file": {"id": notice.file_id.hex(), "name": notice.name, "size": notice.size,
                                       "sha256": notice.sha256.hex() if notice.sha256 else None,
                                       **({"fetch": False} if sent_to else {})}} \
                    if notice else {}
                marks = {**({"to": ev.to} if ev.to else {}),
                         **({"without_one_time_key": True} if ev.without_one_time_key else {})}
                click.echo(json.dumps({"from": ev.sender, "id": ev.msg_id.hex(), "sent_at_ms": ev.sent_at_ms,
                                       "fingerprint": ev.fingerprint, "verified": True,
                                       "body": body.decode("utf-8", "replace"), **marks, **shown_file}))
            else:
                head = f"{now_text(ev.sent_at_ms)} {direct_head(ev)} \u2713 "
                click.echo(head + printable_body(body, width, cell_width(head),
                                                 lambda: save_long_message(state.paths, ev.sender, ev.msg_id, body)))
        elif isinstance(ev, Alert):
            failures += ev.failed  # a server's noise is shown, but it is no failed message
            held += ev.held
            from securecomm.cli.context import warn

            if not ev.quiet:
                warn(printable(ev.text.encode()))

    async def once(connected: Any = None) -> None:
        client, profile = await connect_profile(state.paths, identity, server=server, ca=ca, pin=pin,
                                                 ask=ask_trust)
        if connected is not None:
            connected()
        async with client:
            messenger = Messenger(client, identity, profile.user, state.paths, show)
            pump = asyncio.create_task(messenger.run())
            try:
                if follow:
                    await pump
                else:
                    await messenger.drain(wait_s, pump=pump)
                    if pump.done():
                        pump.result()  # the connection failed: report it
            finally:
                pump.cancel()

    async def go() -> None:
        if follow:
            await _follow(once)
        else:
            await once()

    interrupted = False
    try:
        run_client(go())
    except KeyboardInterrupt:  # what was shown stays acknowledged; the exit says it was cut short
        interrupted = True
    if failures:
        from securecomm.errors import IntegrityError

        raise IntegrityError(f"{failures} message(s) failed verification and were not printed")
    if held:
        from securecomm.errors import ChangedKeyError

        raise ChangedKeyError(f"{held} message(s) held back: their sender's key changed, or their device list "
                              "could not be accepted; they stay on the server until you trust the new key (or the "
                              "list is sorted out)", hint="the warnings above name the sender and what to run "
                              "(securecomm contacts verify NAME)")
    if interrupted:
        from securecomm.errors import InterruptedByUser

        raise InterruptedByUser()
    if not follow and not shown_count:
        from securecomm.cli.context import info

        info("no new messages")  # on stderr: a script reading stdout still gets nothing


async def _follow(once: Any) -> None:
    """Run `once(connected)` (connect, call `connected()`, show deliveries until the connection
    ends) again after a planned shutdown or a dropped connection, with chat's capped backoff.
    A first connection that fails is reported at once, as every other command does. Nothing
    is shown twice: the server redelivers only what was not acknowledged, and Messenger's seen
    ids drop a redelivery of what was shown but not yet acknowledged."""
    import asyncio
    import random
    import time

    from securecomm.cli.context import warn
    from securecomm.client.chat import BACKOFF_MAX, BACKOFF_START, retryable
    from securecomm.errors import SecurecommError, SessionReplacedError

    ever, delay = False, BACKOFF_START
    replaced_at: float | None = None

    def connected() -> None:
        nonlocal ever, delay
        ever, delay = True, BACKOFF_START

    while True:
        try:
            await once(connected)
            return
        except SecurecommError as e:
            if not (ever and retryable(e, replaced_at)):
                raise
            if isinstance(e, SessionReplacedError):
                replaced_at = time.monotonic()
            warn(f"{e.message}; reconnecting in {delay:.1f}s")
        await asyncio.sleep(delay)
        delay = min(BACKOFF_MAX, delay * 2 * random.uniform(0.8, 1.2))


@click.group(invoke_without_command=True, epilog="Examples:\n\n  securecomm contacts --json"
             "\n\n  securecomm contacts trust bob\n\n  securecomm contacts verify bob")
@json_option
@click.pass_context
def contacts(ctx: click.Context, as_json: bool) -> None:
    """Show the contacts whose keys you have pinned (trust on first use).

    A contact whose key changed is marked CHANGED and refused until you
    accept it: `securecomm contacts verify NAME` (compares the new key's
    safety number with them, then trusts it) or `securecomm contacts trust NAME`.
    """
    if ctx.invoked_subcommand is not None:
        return
    from securecomm.cli.context import table
    from securecomm.client.directory import Contacts

    state = ctx.find_object(State)
    assert state is not None
    from securecomm.client.pins import Pins

    entries = Contacts.load(state.paths.contacts).all()
    pins = Pins.load(state.paths.user_pins).entries  # user keys (version 2): these carry `verified`
    if as_json:
        emit_json([{"name": c.name, "fingerprint": c.identity.fingerprint_text, "kem": c.identity.kem,
                    "first_seen": c.first_seen, "verified": c.name in pins and pins[c.name].verified,
                    "changed_to": c.pending.fingerprint_text if c.pending else None} for c in entries
                   if c.name not in pins] + [_pin_json(p) for p in pins.values()])
        return
    from securecomm.cli.context import shown

    rows = [[shown(c.name), c.identity.fingerprint_text,
             f"CHANGED to {c.pending.fingerprint_text}" if c.pending else "ok"] for c in entries if c.name not in pins]
    rows += [[shown(p.name), p.user_key.fingerprint_text, _pin_status(p)] for p in pins.values()]
    click.echo(table(sorted(rows), headers=["name", "fingerprint", "status"]))


def _pin_status(p: Any) -> str:
    if p.pending is not None:
        return ("CHANGED (was VERIFIED)" if p.verified else "CHANGED") + f" to {p.pending.fingerprint_text}"
    return "verified" if p.verified else "ok"


def _pin_json(p: Any) -> dict[str, Any]:
    """A contact pinned by user key: its fingerprint is the user key's (docs/PROTOCOL.md 6.2)."""
    return {"name": p.name, "fingerprint": p.user_key.fingerprint_text, "kem": None, "first_seen": p.first_seen,
            "verified": p.verified, "changed_to": p.pending.fingerprint_text if p.pending else None}


@contacts.command(epilog="Examples:\n\n  securecomm contacts trust bob\n\n"
                          "  securecomm contacts trust bob --fingerprint SHA256:Wm3x...")
@click.argument("name")
@click.option("--fingerprint", "expected", metavar="FP",
              help="The new key's fingerprint as NAME reads it to you: trust only that key. Needed for a "
                   "contact you verified.")
@pass_state
def trust(state: State, name: str, expected: str | None) -> None:
    """Accept NAME's changed key (after checking its fingerprint with them).

    A contact you verified (contacts verify) is not trusted again on a
    bare `contacts trust`: give the new key's fingerprint, or compare the
    new safety number with `contacts verify NAME`, which trusts it too.
    """
    from securecomm.cli.context import shown
    from securecomm.client.directory import Contacts
    from securecomm.client.pins import Pins
    from securecomm.crypto.integrity import same
    from securecomm.errors import ChangedKeyError, IntegrityError, NotFoundError, UsageError

    pins = Pins.load(state.paths.user_pins)
    pinned = pins.get(name.lower())
    if pinned is not None and pinned.pending is None:  # before: "no contact named 'bob'" for a listed contact
        raise NotFoundError(f"{shown(pinned.name)}'s user key has not changed ({pinned.user_key.fingerprint_text}): "
                            "there is no new key to trust", hint="a change shows as CHANGED in `securecomm "
                            "contacts` once a send, inbox or chat meets it")
    if pinned is not None and pinned.pending is not None:  # a changed user key (docs/PROTOCOL.md 6.1)
        new_fp = pinned.pending.fingerprint_text
        if expected is not None:
            given = expected.strip() if expected.strip().startswith("SHA256:") else "SHA256:" + expected.strip()
            if not same(given.encode(), new_fp.encode()):
                raise IntegrityError(f"{shown(pinned.name)}'s new user key is {new_fp}, not the one you gave; "
                                     "nothing was trusted", hint="compare again with them, or: securecomm "
                                     f"contacts verify {shown(pinned.name)}")
        elif pinned.verified:  # new-user check: a bare `contacts trust` quietly undid a verification
            raise ChangedKeyError(f"you VERIFIED {shown(pinned.name)}'s safety number, and their user key changed "
                                  f"to {new_fp}: it is trusted only with its fingerprint, compared with them",
                                  hint=f"securecomm contacts verify {shown(pinned.name)} (compare the new "
                                  f"safety number), or: securecomm contacts trust {shown(pinned.name)} "
                                  "--fingerprint FP")
        p = pins.trust(name.lower())
        click.echo(f"now trusting {shown(p.name)} user key {p.user_key.fingerprint_text}; CHANGED cleared "
                   "(not verified: compare safety numbers again with securecomm contacts verify)")
        return
    if expected is not None:
        raise UsageError(f"{shown(name)} has no changed user key to check --fingerprint against",
                         hint="contacts pinned before devices have none: run without --fingerprint")
    c = Contacts.load(state.paths.contacts).trust(name.lower())
    click.echo(f"now trusting {shown(c.name)} {c.identity.fingerprint_text}; CHANGED cleared")


@contacts.command(epilog="Example: securecomm contacts verify bob")
@click.argument("name")
@connection_options
@click.option("--yes", is_flag=True, help="Mark verified without asking (you compared the number already).")
@pass_state
def verify(state: State, name: str, server: str | None, ca: str | None, pin: str | None,
           passphrase_file: str | None, yes: bool) -> None:
    """Show the 60-digit safety number you share with NAME, and mark NAME verified.

    Both of you see the same number (it comes from both user keys); compare
    it in person or on a call. If a verified contact's user key changes,
    securecomm refuses it with a louder warning than for other contacts.
    """
    from securecomm.cli.devices import verify_contact

    verify_contact(state, name, {"server": server, "ca": ca, "pin": pin, "passphrase_file": passphrase_file}, yes)
