"""`securecomm db migrate|copy`: the PostgreSQL database that several relays share (issue 13)."""

from __future__ import annotations

from pathlib import Path

import click

from securecomm.cli.context import info, table
from securecomm.errors import UsageError

EXAMPLE_URL = "postgresql://securecomm@127.0.0.1/securecomm"


def require_url(value: str, option: str) -> str:
    """A PostgreSQL URL; a SQLite file needs none of these commands (serve creates and upgrades it)."""
    from securecomm.store.backends import is_url

    if not is_url(value):
        raise UsageError(f"{option} must be a PostgreSQL URL such as {EXAMPLE_URL}",
                         hint="a SQLite database needs no migrate step: serve creates and upgrades it")
    return value


url_help = ("PostgreSQL URL, e.g. " + EXAMPLE_URL + ". Prefer PGPASSWORD or ~/.pgpass to a password in the URL: "
            "a command line is visible to other local users.")


@click.group(epilog=f"Example: securecomm db migrate --db {EXAMPLE_URL}")
def db() -> None:
    """Create, upgrade and fill the PostgreSQL database that several relays share.

    A relay started with `serve --db URL` keeps everything durable there
    (accounts, device keys, mailboxes, receipts). The schema is never changed
    by a relay: run `db migrate` once per upgrade, before starting relays.
    """


@db.command(epilog=f"Example: securecomm db migrate --db {EXAMPLE_URL}")
@click.option("--db", "url", required=True, metavar="URL", help=url_help)
def migrate(url: str) -> None:
    """Create the schema in an empty database, or upgrade an older one.

    Migrations are numbered as the SQLite ones and run in one transaction:
    an upgrade that fails leaves the schema as it was. Relays starting at
    the same time wait for each other.
    """
    from securecomm.store.backends import postgres_store, redact

    store = postgres_store()(require_url(url, "--db"), migrate=True)
    store.close()
    assert store.migrated is not None
    start, end = store.migrated
    info(f"schema at {redact(url)} is at version {end}" + ("" if start == end else f" (was {start})"))


@db.command(epilog=f"Example: securecomm db copy --from ~/.local/share/securecomm/securecomm.db --to {EXAMPLE_URL}")
@click.option("--from", "source", required=True, metavar="SQLITE_FILE",
              type=click.Path(dir_okay=False, path_type=Path), help="The single relay's SQLite database.")
@click.option("--to", "url", required=True, metavar="URL", help=url_help)
def copy(source: Path, url: str) -> None:
    """Move a single relay's SQLite database into an empty PostgreSQL one.

    Stop the relay first. Accounts, device keys, waiting mail (with the
    sequence numbers clients were offered), message ids and messages to the
    server are copied in one transaction; the row counts of both sides are
    compared before it commits, and printed.
    """
    from securecomm.store.backends import postgres_store

    postgres_store()  # the cluster extra is installed (else one clear line)
    from securecomm.store.backends import redact
    from securecomm.store.transfer import copy_to_postgres

    copied = copy_to_postgres(source, require_url(url, "--to"))
    click.echo(table([[c.table, c.sqlite_rows, c.postgres_rows, "ok"] for c in copied],
                     headers=["table", "sqlite rows", "postgresql rows", "counts"]))
    info(f"copied {source} to {redact(url)}; point the relays at it with: securecomm serve --db URL")
