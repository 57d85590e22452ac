"""`securecomm backup` and `securecomm restore`: the server's SQLite database, copied safely."""

from __future__ import annotations

from pathlib import Path

import click

from securecomm.cli.context import State, info, pass_state, warn


def _sqlite_only(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """A SQLite file; a PostgreSQL URL is refused with what backs it up instead (pg_dump), before
    click.Path would fold its `//` into a file name that does not exist."""
    from securecomm.store.backends import is_url
    from securecomm.store.urls import redact

    if value is not None and is_url(value):
        from securecomm.errors import UsageError

        raise UsageError(f"{ctx.info_name} is for a SQLite database; {redact(value)} is PostgreSQL, whose "
                         "backups are pg_dump's job", hint="pg_dump --format=custom --file FILE URL, and "
                         "pg_restore to put one back (README, \"Operating a server\": Backups)")
    return None if value is None else Path(value)


db_option = click.option("--db", type=click.Path(dir_okay=False), callback=_sqlite_only,
                         help="The server's SQLite database [data dir, as `securecomm paths` shows]; "
                              "PostgreSQL: pg_dump.")
force_option = click.option("--force", is_flag=True, help="Replace FILE (backup) or the database (restore).")


@click.command(epilog="Example: securecomm --home /srv/securecomm backup /var/backups/securecomm-$(date +%F).db")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@force_option
@pass_state
def backup(state: State, file: Path, db: Path | None, force: bool) -> None:
    """Copy the server's database to FILE, consistently, while the server runs.

    Uses SQLite's online backup API: the copy is one committed snapshot even
    while the server writes, is checked with PRAGMA integrity_check, and is
    written 0600. Keys and certificates are not in it: back up the tls/ and
    server/ folders too (see README, "Operating a server").
    """
    from securecomm.store.backup import backup as copy_database

    source = db or state.paths.database
    size = copy_database(source, file, force=force)
    info(f"backed up {source} to {file} ({size} bytes, integrity ok)")


@click.command(epilog="Example: systemctl stop securecomm && "
               "securecomm --home /srv/securecomm restore --force /var/backups/securecomm-2026-01-31.db")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@force_option
@pass_state
def restore(state: State, file: Path, db: Path | None, force: bool) -> None:
    """Put the backup FILE in place of the server's database.

    FILE is checked first (PRAGMA integrity_check, and that it is a securecomm
    database); a database a running server holds open is never replaced, and an
    existing stopped one only with --force.
    """
    from securecomm.store.backup import restore as put_back

    target = db or state.paths.database
    put_back(file, target, force=force)
    info(f"restored {file} to {target}; start the server to use it")
    # the attacker's check: a device removed after the backup is back on its list, silently
    warn("devices removed since this backup was taken are on their accounts' lists again: ask users who "
         "removed one (a lost or stolen device) to remove it again (securecomm devices remove)")
    # the new-user check: senders were told "stored" for mail that the restore takes back
    warn("messages and files stored since this backup was taken are gone (their senders were told they were "
         "stored): ask users to send again what was not read before the restore")
