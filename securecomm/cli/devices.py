"""`securecomm devices` and `contacts verify`: this account's devices and safety numbers (docs/PROTOCOL.md 6).

Click only: parse, call one function of client/devicecmds.py, print. Heavy
imports stay inside the commands so that --help loads no cryptography.
"""

from __future__ import annotations

from typing import Any

import click

from securecomm.cli.context import (
    State,
    ask_trust,
    connection_options,
    emit_json,
    info,
    json_option,
    profile_identity,
    run_client,
    shown,
    stdin_is_tty,
    table,
    warn,
)
from securecomm.errors import UsageError


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))


def _session(state: State, options: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(identity, profile, this device's keys) for a command that logs in with the profile's key."""
    from securecomm.config import Profile
    from securecomm.store.devicekeys import DeviceKeys

    identity = profile_identity(state, options["passphrase_file"])
    profile = Profile.load(state.paths.profile)
    return identity, profile, DeviceKeys(state.paths.device_keys(profile.identity), identity.kem)


async def _connected(state: State, identity: Any, options: dict[str, Any]) -> Any:
    from securecomm.client.login import connect_profile

    client, _ = await connect_profile(state.paths, identity, server=options["server"], ca=options["ca"],
                                      pin=options["pin"], ask=ask_trust)
    return client


@click.group(invoke_without_command=True, epilog="Examples:\n\n  securecomm devices\n\n"
             "  securecomm devices --json\n\n  securecomm devices remove 3f9c0a1b2c4d\n\n"
             "  securecomm devices approve K3M9Q-7TX2B")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of the devices for scripts.")
@click.pass_context
def devices(ctx: click.Context, server: str | None, ca: str | None, pin: str | None, passphrase_file: str | None,
            as_json: bool) -> None:
    """List this account's devices: name, id, fingerprint, added, last seen; remove or approve one.

    The list comes from the server and is shown only if it verifies under
    the user key this device holds; `*` marks this device.
    """
    ctx.meta["devices.options"] = {"server": server, "ca": ca, "pin": pin, "passphrase_file": passphrase_file}
    if ctx.invoked_subcommand is not None:
        return
    from securecomm.client.devicecmds import list_devices

    state = ctx.find_object(State)
    assert state is not None
    options = ctx.meta["devices.options"]
    identity, profile, keys = _session(state, options)

    async def go() -> Any:
        async with await _connected(state, identity, options) as client:
            return await list_devices(client, profile.user, keys, identity, warn)

    rows = run_client(go())
    if as_json:
        emit_json([r.as_json() for r in rows])
        return
    from securecomm.client.devicecmds import own_user_key

    click.echo(f"{shown(profile.user)}'s user key: {own_user_key(keys).public.fingerprint_text} (what your "
               "contacts pin: compare it with them, or use securecomm contacts verify)")
    click.echo(table([["*" if r.this else "", shown(r.name), r.device_id[:6].hex(), r.fingerprint,
                       _when(r.added_ms), _when(r.last_seen_ms)] for r in rows],
                     headers=["", "name", "id", "fingerprint", "added", "last seen"]))


def _options(ctx: click.Context) -> dict[str, Any]:
    options: dict[str, Any] = ctx.meta.get("devices.options", {})  # the group's, given before the subcommand
    return {k: ctx.params.get(k) or options.get(k) for k in ("server", "ca", "pin", "passphrase_file")}


@devices.command(epilog="Examples:\n\n  securecomm devices remove 3f9c0a1b2c4d\n\n"
                         "  securecomm devices remove 3f9c0a1b2c4d --yes")
@click.argument("device_id", metavar="ID")
@connection_options
@click.option("--yes", is_flag=True, help="Remove without asking (for scripts).")
@json_option
@click.pass_context
def remove(ctx: click.Context, device_id: str, server: str | None, ca: str | None, pin: str | None,
           passphrase_file: str | None, yes: bool, as_json: bool) -> None:
    """Revoke device ID (the ID column of `securecomm devices`, 6 hex digits or more).

    Shows the device's name and fingerprint and asks (--yes: does not ask).
    This device signs a new list without it with the user key; the server
    closes the removed device's sessions and deletes its prekeys and mail.
    Removing this device (`*`) logs it out: it can come back only by pairing.
    """
    from securecomm.client.devicecmds import device_to_remove, remove_device
    from securecomm.errors import InterruptedByUser

    state = ctx.find_object(State)
    assert state is not None
    options = _options(ctx)
    identity, profile, keys = _session(state, options)

    async def go() -> Any:
        async with await _connected(state, identity, options) as client:
            current, row = await device_to_remove(client, profile.user, keys, identity, device_id, warn)
            what = f"device {shown(row.name)} ({row.device_id[:6].hex()}, {row.fingerprint})"
            if row.this:
                warn(f"{what} is THIS device: removing it logs it out and drops its waiting mail; it can come "
                     "back only by pairing it again from another device")
            if not yes and not _confirm(f"remove {what}?", f"securecomm devices remove {shown(device_id)} --yes"):
                raise InterruptedByUser("the device was not removed; nothing was changed")
            return row, await remove_device(client, profile.user, keys, current, row)

    row, counter = run_client(go())
    if row.this:  # removed: the account's signing key and the prekeys have no use here any more
        keys.erase_all()
        info("this device's copy of the user key and its private prekeys were erased")
    if as_json:
        emit_json({"removed": {**row.as_json(), "last_seen_ms": None, "this": row.this}, "counter": counter})
        return
    click.echo(f"removed device {shown(row.name)} ({row.device_id[:6].hex()}, {row.fingerprint}); "
               f"device list {counter}")


@devices.command(epilog="Example:\n\n  securecomm devices republish")
@connection_options
@click.option("--yes", is_flag=True, help="Sign without asking (for scripts).")
@click.pass_context
def republish(ctx: click.Context, server: str | None, ca: str | None, pin: str | None,
              passphrase_file: str | None, yes: bool) -> None:
    """Sign the server's list of your devices again, above the newest this device saw.

    For after the server was restored from a backup and holds an older list than
    one you signed: if every device on it is one you keep (check with `securecomm
    devices`), this signs the same devices as a new list, and sending works again.
    If a device on it should not be there, remove it instead (`devices remove`).
    """
    from securecomm.client.devicecmds import older_than_seen, own_directory, republish_list
    from securecomm.errors import InterruptedByUser

    state = ctx.find_object(State)
    assert state is not None
    options = _options(ctx)
    identity, profile, keys = _session(state, options)

    async def go() -> int | None:
        async with await _connected(state, identity, options) as client:
            current, _ = await own_directory(client, profile.user, keys, lambda _text: None)
            stale = older_than_seen(keys, current)
            if stale is None:
                return None
            rows = ", ".join(f"{shown(c.name)} ({c.device_id[:6].hex()})" for c in current.certs)
            warn(stale)
            if not yes and not _confirm(f"sign list {current.device_list.counter} again, as a new list above "
                                        f"{keys.own_counter}, with these devices: {rows}?",
                                        "securecomm devices republish --yes"):
                raise InterruptedByUser("nothing was signed")
            return await republish_list(client, profile.user, keys, current)

    counter = run_client(go())
    if counter is None:
        click.echo("the server's list is not older than any this device signed or saw: nothing to sign")
        return
    click.echo(f"signed the same devices again as device list {counter}")


def _confirm(question: str, hint: str) -> bool:
    """Ask; a stdin that ends before an answer (a script without --yes) is interrupted (130), with a hint."""
    from securecomm.errors import InterruptedByUser

    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        if stdin_is_tty():
            raise
        raise InterruptedByUser("no answer (stdin is no terminal); nothing was changed", hint=hint) from None


def verify_contact(state: State, name: str, options: dict[str, Any], yes: bool) -> None:
    """`contacts verify NAME`: show the safety number, ask, mark verified."""
    from securecomm.client.answers import check_user_name
    from securecomm.client.devicecmds import safety_for
    from securecomm.client.pins import Pins
    from securecomm.crypto.safety import format_number
    from securecomm.errors import InterruptedByUser

    name = name.lower()
    check_user_name(name)
    identity, profile, keys = _session(state, options)
    if name == profile.user:
        raise UsageError("that is you: a safety number is between you and a contact")
    pins = Pins.load(state.paths.user_pins)

    async def go() -> Any:
        async with await _connected(state, identity, options) as client:
            return await safety_for(client, profile.user, keys, pins, name)

    found = run_client(go())
    if found.changed_from is not None:
        loud = "STOP: you VERIFIED this contact, and " if found.pin.verified else ""
        warn(f"{loud}the user key of {shown(name)} has CHANGED from {found.changed_from.fingerprint_text} to "
             f"{found.their_key.fingerprint_text}; this may be an attack, or they reset their account. Compare "
             "the number below with them in person or on a call: only if it matches, answer yes")
    click.echo(f"safety number with {shown(name)} (user key {found.their_key.fingerprint_text}):\n")
    click.echo(format_number(found.number) + "\n")
    if found.pin.verified and found.changed_from is None:
        click.echo(f"{shown(name)} is already verified")
        return
    if not yes:
        question = f"does {shown(name)} see the same 60 digits (compare in person or on a call)?"
        if found.changed_from is not None:
            question += " yes trusts the new key and marks it verified"
        if not _confirm(question, f"compare them with {name}, then: securecomm contacts verify {name} --yes"):
            raise InterruptedByUser(f"{name} was not marked verified (if the numbers differ, someone may be "
                                    "between you: do not trust this key until they match)" +
                                    ("; the new key is still refused" if found.changed_from else ""))
    pins = Pins.load(state.paths.user_pins)
    if found.changed_from is not None:
        pending = pins.get(name)
        if pending is None or pending.pending is None or pending.pending.raw != found.their_key.raw:
            raise UsageError(f"{name}'s key changed again meanwhile; nothing was trusted",
                             hint=f"run again: securecomm contacts verify {name}")
        pins.trust(name)
        click.echo(f"now trusting {shown(name)}'s new user key {found.their_key.fingerprint_text}")
    pins.mark_verified(name)
    click.echo(f"{shown(name)} is now verified; if their user key ever changes, securecomm stops loudly")


@devices.command(epilog="Examples:\n\n  securecomm devices approve K3M9Q-7TX2B\n\n"
                         "  securecomm devices approve K3M9Q-7TX2B --fingerprint SHA256:Wm3x...")
@click.argument("code")
@connection_options
@click.option("--fingerprint", "expected", metavar="FP",
              help="The fingerprint the new device printed: approve only that device, without asking.")
@click.option("--yes", is_flag=True, help="Do not ask; needs --fingerprint (nothing is approved unseen).")
@click.pass_context
def approve(ctx: click.Context, code: str, server: str | None, ca: str | None, pin: str | None,
            passphrase_file: str | None, expected: str | None, yes: bool) -> None:
    """Add the new device that shows pairing CODE (from `user login` on it).

    Shows the waiting device's name and fingerprint and asks whether it is
    the one the new device printed; with --fingerprint FP (as the new
    device prints it in its hint) that check is made for you. On yes, signs
    it into your device list with the user key and hands the user key over,
    sealed to that device. The code comes from the server: only the
    fingerprint tells your device from one the server, or whoever saw the
    code, put in its place.
    """
    from securecomm.client.devicecmds import approve_pairing, look_up_pairing, own_user_key
    from securecomm.crypto.integrity import same
    from securecomm.errors import IntegrityError, InterruptedByUser

    if yes and expected is None:
        raise UsageError("--yes would approve a device nobody compared",
                         hint="give the fingerprint the new device printed: --fingerprint SHA256:...")
    state = ctx.find_object(State)
    assert state is not None
    options = _options(ctx)
    identity, profile, keys = _session(state, options)
    user_key = own_user_key(keys)

    async def go() -> Any:
        async with await _connected(state, identity, options) as client:
            request = await look_up_pairing(client, code)
            if expected is not None:  # compared before anything is shown: a stranger's fingerprint is not printed
                given = expected.strip()
                given = given if given.startswith("SHA256:") else "SHA256:" + given
                if not same(given.encode(), request.device.fingerprint_text.encode()):
                    raise IntegrityError(f"the device waiting with code {shown(code)} is not the one you named: "
                                         f"its fingerprint begins {request.device.fingerprint_text[:14]}... "
                                         "(not shown whole: it is not one to copy); nothing was approved",
                                         hint="someone else has this code, or the server put another device in "
                                         "its place: run user login on the new device for a new code")
            click.echo(f"device {shown(request.name)} asks to join {shown(profile.user)}'s devices\n"
                       f"  its fingerprint: {request.device.fingerprint_text}\n"
                       f"  your user key:   {user_key.public.fingerprint_text}")
            if expected is None and not _confirm("is this your device, showing the same fingerprint?",
                                                 f"compare them, then: securecomm devices approve {code} "
                                                 "--fingerprint FP (the fingerprint the new device printed)"):
                raise InterruptedByUser("the device was not approved; nothing was changed")
            return request, await approve_pairing(client, profile.user, keys, identity, request)

    request, counter = run_client(go())
    click.echo(f"approved {shown(request.name)} ({request.device.fingerprint[:6].hex()}); device list {counter}; "
               f"on it, run: securecomm user login {shown(profile.user)}")
