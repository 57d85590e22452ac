"""`securecomm certgen` and `securecomm keygen`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from securecomm.cli.context import State, emit_json, info, json_option, pass_state, read_passphrase_file
from securecomm.errors import ExistsError, NotFoundError, SecurecommError, UsageError


@click.command(epilog="Example: securecomm certgen --host chat.example.net --days 30")
@click.option("--host", "hosts", multiple=True, metavar="NAME_OR_IP",
              help="Extra DNS name or IP for the certificate (repeatable).")
@click.option("--days", type=int, default=90, show_default=True,
              help="Server certificate lifetime, 1 to 397 days.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write CA and server files into DIR instead of the data dir.")
@click.option("--new-ca", is_flag=True, help="Make a new CA even if one exists (needs --force to replace).")
@click.option("--force", is_flag=True, help="Replace existing files, keeping the old ones as NAME.bak.")
@json_option
@pass_state
def certgen(state: State, hosts: tuple[str, ...], days: int, out: Path | None,
            new_ca: bool, force: bool, as_json: bool) -> None:
    """Create a local CA (once) and a TLS server certificate signed by it.

    The CA is reused unless --new-ca. The CA fingerprint printed at the end is
    what clients pin with --pin.
    """
    from securecomm.crypto.certfiles import TLSFiles, issue_certificates

    files = TLSFiles.in_dir(out) if out else TLSFiles.from_paths(state.paths)
    result = issue_certificates(files, hosts=hosts, days=days, new_ca=new_ca, force=force)
    if as_json:
        emit_json(result)
        return
    for label in ("ca_cert", "ca_key", "server_cert", "server_key"):
        click.echo(f"{label.replace('_', ' '):12} {result[label]}")
    click.echo(f"{'hosts':12} {', '.join(result['hosts'])}")
    click.echo(f"{'expires':12} {result['not_after']}")
    click.echo(f"{'CA':12} {'reused' if result['ca_reused'] else 'created'}")
    click.echo(f"{'fingerprint':12} {result['ca_fingerprint']}")
    if force:  # a running server keeps the certificate it loaded until SIGHUP (server/certreload.py)
        info("a running `securecomm serve` serves the new certificate once it reloads it: send it SIGHUP "
             "(systemctl reload securecomm), no restart needed")
    if result["ca_reused"] is False and force:
        info("a new CA: every client must trust it again (--ca FILE or --pin with the fingerprint above)")


@click.command(
    epilog="Examples:\n\n  securecomm keygen\n\n  securecomm keygen --name work --kem p256 --passphrase"
    "\n\n  securecomm keygen --show --json"
)
@click.option("--name", default="default", show_default=True, help="Name of the identity.")
@click.option("--kem", type=click.Choice(["mlkem768-x25519", "x25519", "p256"]),
              default="mlkem768-x25519", show_default=True,
              help="Key-encapsulation key: post-quantum hybrid, plain X25519, or NIST P-256.")
@click.option("--passphrase", "ask_passphrase", is_flag=True, help="Encrypt the private key; prompts twice.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Encrypt the private key with the first line of FILE (no prompt).")
@click.option("--show", is_flag=True, help="Print the existing public identity; touch no private key.")
@click.option("--force", is_flag=True, help="Replace an existing identity, keeping NAME.key.bak.")
@json_option
@pass_state
def keygen(state: State, name: str, kem: str, ask_passphrase: bool, passphrase_file: Path | None,
           show: bool, force: bool, as_json: bool) -> None:
    """Create a user identity: an HPKE key-encapsulation key and an Ed25519 key.

    Prints the public identity (one line to paste to others) and its
    fingerprint. The private key is stored unencrypted unless --passphrase or
    --passphrase-file.
    """
    from securecomm.crypto import identity as ident

    check_name(name)
    paths = state.paths
    if show:
        pub_path = paths.identity_pub(name)
        if not pub_path.exists():
            raise NotFoundError(f"no identity named {name!r}", hint=f"create it with: securecomm keygen --name {name}")
        public = ident.load_public(pub_path)
    else:
        if ask_passphrase and passphrase_file:
            raise UsageError("use either --passphrase or --passphrase-file, not both")
        secret = None
        if passphrase_file:
            secret = read_passphrase_file(passphrase_file)
        elif ask_passphrase:
            secret = click.prompt("passphrase", hide_input=True, confirmation_prompt=True, err=True).encode()
        identity = ident.PrivateIdentity.generate(kem)
        try:
            ident.save(identity, paths.identity_key(name), paths.identity_pub(name), passphrase=secret, force=force)
        except ExistsError as e:  # rerunning keygen to see the public line must not lead to --force
            e.hint = (f"to print its public line: securecomm keygen --show{_name_opt(name)}; to replace it "
                      "with a new key (the old one is kept as NAME.key.bak; a server where it is a device then sees "
                      "a new device, to be paired again): --force")
            raise
        public = identity.public
        _warn_if_a_device(paths, name)
    if as_json:
        emit_json({"name": name, **public.as_dict(), "path": str(paths.identity_pub(name))})
        return
    click.echo(public.line)
    click.echo(f"fingerprint {public.fingerprint_text} ({public.kem} + ed25519, name {name})", err=True)


def _warn_if_a_device(paths: Any, name: str) -> None:
    """keygen --force on the identity the saved profile logs in with: that key was this device on its
    server, and the new one is not (the new-user check: every command then failed, and the hint said
    contacts and servers simply "know the new one")."""
    from securecomm.cli.context import warn
    from securecomm.config import Profile

    try:
        profile = Profile.load_optional(paths.profile)
    except SecurecommError:
        return
    if profile is None or profile.identity != name or not (paths.device_keys(name) / "user.key").exists():
        return
    key = paths.identity_key(name)
    warn(f"identity {name!r} was this device's key for {profile.user} on {profile.server}: with a new key this is a "
         f"new device there. Pair it (securecomm user login {profile.user}, then approve it on another device), "
         f"or, if it was your only device, securecomm user login {profile.user} --reset-user-key (contacts see a "
         f"changed key); to undo, put {key.name}.bak back as {key.name}")


def check_name(name: str) -> None:
    from securecomm.paths import check_identity_name

    check_identity_name(name)  # the one rule, shared with every command that takes an identity name


def _name_opt(name: str) -> str:
    return "" if name == "default" else f" --name {name}"
