"""`zbilling`: the operator's command line.

Verbs that read a data directory open it read-only, which LMDB allows beside a running server
(verify, backup, accounts show, lago dead-letters). `lago retry` writes, so it needs the data
directory to itself (the server stopped).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click
import trio

from actors.runtime import open_billing
from api.server import run as run_server
from api.settings import SettingsError, load_settings
from engine.errors import BillingError
from engine.ids import parse_user_id, transaction_id_str
from engine.money import format_usd
from lago.cli import deployment as lago_deployment
from storage.datadir_lock import DataDirLocked
from storage.lmdb_store import LmdbStore
from storage.store import StoreError
from storage.verify import verify_store

DEFAULT_DATA_DIR = "./data"
ENTRIES_SHOWN_DEFAULT = 20
ENTRIES_SHOWN_MAX = 1000
EXIT_BAD_INPUT = 2

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("ZBILLING_DATA_DIR", DEFAULT_DATA_DIR),
    show_default="ZBILLING_DATA_DIR or ./data",
    help="The data directory (LMDB).",
)


def fail(message: str) -> NoReturn:
    click.echo(f"zbilling: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


def open_read_only(data_dir: Path) -> LmdbStore:
    try:
        return LmdbStore(data_dir, readonly=True)
    except StoreError as error:
        fail(str(error))


@click.group()
def main() -> None:
    """z-billing: credit billing and metering engine."""


@main.command()
@click.option("--listen", default=None, help="HOST:PORT (LISTEN_ADDR, default 127.0.0.1:8080)")
@data_dir_option
@click.option("--dev", is_flag=True, help="Accept test tokens; generate keys that are unset.")
def serve(listen: str | None, data_dir: Path, dev: bool) -> None:
    """Run the HTTP server on the engine (LMDB under the data directory)."""
    try:
        settings = load_settings(listen=listen, data_dir=data_dir, dev=dev)
    except SettingsError as error:
        fail(str(error))
    try:
        run_server(settings)
    except DataDirLocked as error:
        fail(str(error))


@main.command()
@data_dir_option
def verify(data_dir: Path) -> None:
    """Check the ledger invariants over the whole data directory (exit 1 on violations)."""
    store = open_read_only(data_dir)
    try:
        report = verify_store(store)
    finally:
        store.close()
    click.echo(f"{report.accounts} accounts, {report.entries} entries, "
               f"{report.outcomes} idempotency keys checked")
    for violation in report.violations:
        click.echo(f"VIOLATION {violation.subject}: {violation.problem}")
    if not report.ok:
        click.echo(f"{len(report.violations)} violations")
        sys.exit(1)
    click.echo("ledger consistent")


@main.command()
@click.argument("destination", type=click.Path(path_type=Path))
@data_dir_option
def backup(destination: Path, data_dir: Path) -> None:
    """A consistent, compacted copy of the data directory, while the server runs."""
    if destination.exists():
        fail(f"{destination} exists; give a new directory")
    store = open_read_only(data_dir)
    try:
        store.backup(destination)
    finally:
        store.close()
    click.echo(f"backup written to {destination}")


@main.group()
def accounts() -> None:
    """Inspect accounts."""


@accounts.command("show")
@click.argument("user")
@data_dir_option
@click.option("--limit", type=click.IntRange(1, ENTRIES_SHOWN_MAX),
              default=ENTRIES_SHOWN_DEFAULT, show_default=True, help="Entries to list.")
def accounts_show(user: str, data_dir: Path, limit: int) -> None:
    """An account and its newest ledger entries."""
    try:
        user_id = parse_user_id(user)
    except BillingError as error:
        fail(error.message)
    store = open_read_only(data_dir)
    try:
        account = store.get_account(user_id)
        if account is None:
            fail(f"no account for user {user_id}")
        page = store.list_entries(user_id, limit)
    finally:
        store.close()
    click.echo(f"user        {account.user_id}  ({account.status.value}, plan {account.plan})")
    click.echo(f"balance     {format_usd(account.balance)}  ({account.balance} credits)")
    click.echo(f"held        {account.held}   available {account.available}")
    click.echo(f"unbilled    {account.unbilled_micros} micro-credits")
    click.echo(f"lifetime    purchased {account.lifetime_purchased}, granted "
               f"{account.lifetime_granted}, used {account.lifetime_used}")
    click.echo(f"entries     {account.seq}")
    for entry in page.entries:
        click.echo(f"  {transaction_id_str(entry.transaction_id)}  {entry.entry_type.value:<18}"
                   f" {entry.amount:>+12}  -> {entry.balance_after:>12}  "
                   f"{entry.source_key or ''}")
    if page.has_more:
        click.echo(f"  … {account.seq - len(page.entries)} older entries")


@main.group()
def lago() -> None:
    """Lago: export dead letters, and a self-hosted deployment with Docker Compose."""


for _name, _command in lago_deployment.commands.items():
    lago.add_command(_command, _name)


@lago.command("dead-letters")
@data_dir_option
def lago_dead_letters(data_dir: Path) -> None:
    """Events Lago refused on their own, with Lago's answer."""
    store = open_read_only(data_dir)
    try:
        parked = store.dead_letters()
        depth = store.outbox_depth()
    finally:
        store.close()
    click.echo(f"{len(parked)} dead letters, {depth} events waiting in the outbox")
    for event in parked:
        click.echo(f"  #{event.sequence} {event.event.get('transaction_id', 'customer')}  "
                   f"HTTP {event.status}: {event.reason[:200]}")


@lago.command("retry")
@data_dir_option
def lago_retry(data_dir: Path) -> None:
    """Put every dead letter back in the outbox (after fixing the cause in Lago)."""

    async def requeue() -> int:
        async with open_billing(data_dir) as billing:
            return await billing.requeue_dead_letters()

    if not (data_dir / "data.mdb").exists():
        fail(f"no data directory at {data_dir}")
    try:
        count = trio.run(requeue)
    except DataDirLocked as error:
        fail(f"{error}; stop the server first")
    click.echo(f"{count} events back in the outbox; the exporter sends them on next start")
