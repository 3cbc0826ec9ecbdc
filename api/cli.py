"""`zbilling`: the operator's command line.

Verbs that read a data directory open it read-only, which LMDB allows beside a running server
(verify, backup, accounts show, lago dead-letters). `lago retry` writes, so it needs the data
directory to itself (the server stopped).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeVar

import click
import httpx
import trio

from actors.billing import Billing
from actors.config import load_pricing
from actors.runtime import open_billing
from api.client import BillingApiError, BillingClient
from api.config_file import read_config_file
from api.schemas import iso_ms
from api.server import run as run_server
from api.settings import SettingsError, load_settings
from api.supervisor import ListenError, run_supervised
from engine.errors import BillingError
from engine.ids import parse_user_id, transaction_id_str
from engine.ledger import ADMIN_GRANT_TYPES, EntryType
from engine.money import AMOUNT_CENTS_MAX, AMOUNT_CENTS_MIN, format_usd
from engine.pricing import PricingError
from lago.cli import deployment as lago_deployment
from storage.datadir_lock import DataDirLocked
from storage.lmdb_store import LmdbStore
from storage.store import StoreError
from storage.verify import verify_store

T = TypeVar("T")
DATA_DIR_DEFAULT = "./data"
ENTRIES_SHOWN_DEFAULT = 20
ENTRIES_SHOWN_MAX = 1000
EXIT_BAD_INPUT = 2
WORKERS_MAX = 256

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("ZBILLING_DATA_DIR", DATA_DIR_DEFAULT),
    show_default="ZBILLING_DATA_DIR or ./data",
    help="The data directory (LMDB).",
)


def fail(message: str) -> NoReturn:
    click.echo(f"zbilling: {message}", err=True)
    sys.exit(EXIT_BAD_INPUT)


@contextmanager
def read_only_store(data_dir: Path) -> Iterator[LmdbStore]:
    """The data directory read beside a running server (one snapshot), closed after use."""
    try:
        store = LmdbStore(data_dir, readonly=True)
    except StoreError as error:
        fail(str(error))
    try:
        yield store
    finally:
        store.close()


def on_data_dir(data_dir: Path, use: Callable[[Billing], Awaitable[T]], hint: str) -> T:
    """Run `use` on the engine over a data directory no server holds; fail clearly."""

    async def run() -> T | BillingError:
        async with open_billing(data_dir) as billing:
            try:
                return await use(billing)
            except BillingError as error:  # returned, so the engine still shuts down clean
                return error

    if not (data_dir / "data.mdb").exists():
        fail(f"no data directory at {data_dir}")
    try:
        result = trio.run(run)
    except DataDirLocked as error:
        fail(f"{error}; {hint}")
    if isinstance(result, BillingError):
        fail(f"{result.code}: {result.message}")
    return result


@click.group()
def main() -> None:
    """z-billing: credit billing and metering engine."""


@main.command()
@click.option("--listen", default=None, help="HOST:PORT (LISTEN_ADDR, default 127.0.0.1:8080)")
@data_dir_option
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML: named service keys with scopes, the pricing file.")
@click.option("--dev", is_flag=True, help="Accept test tokens; generate keys that are unset.")
@click.option("--workers", type=click.IntRange(1, WORKERS_MAX), default=os.cpu_count() or 1,
              show_default="the number of cores",
              help="HTTP worker processes in front of one engine process; 1 runs the engine "
                   "and the HTTP server in this one process.")
def serve(listen: str | None, data_dir: Path, config_path: Path | None, dev: bool,
          workers: int) -> None:
    """Run the HTTP server on the engine (LMDB under the data directory)."""
    try:
        config = read_config_file(config_path) if config_path else None
        settings = load_settings(
            listen=listen, data_dir=data_dir, dev=dev,
            service_keys=config.service_keys if config else (),
            pricing_path=config.pricing_path if config else None,
            plans=config.plans if config else None,
            lot_defaults=config.lot_defaults if config else None,
        )
    except SettingsError as error:
        fail(str(error))
    try:
        if workers == 1:
            run_server(settings)
        else:
            load_pricing(settings.pricing_path)  # a bad pricing file fails here, clearly
            run_supervised(settings, workers)
    except (DataDirLocked, PricingError, ListenError) as error:
        fail(str(error))


@main.command()
@data_dir_option
def verify(data_dir: Path) -> None:
    """Check the ledger invariants over the whole data directory (exit 1 on violations)."""
    with read_only_store(data_dir) as store:
        report = verify_store(store)
    click.echo(f"{report.accounts} accounts, {report.entries} entries, "
               f"{report.outcomes} idempotency keys checked")
    click.echo(f"log: checkpointed through record {report.log_position} of "
               f"{report.log_last}, {report.log_writes_waiting} writes replayed in the check")
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
    with read_only_store(data_dir) as store:
        store.backup(destination)
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
    with read_only_store(data_dir) as store:
        account = store.get_account(user_id)
        if account is None:
            fail(f"no account for user {user_id}")
        page = store.list_entries(user_id, limit)
    click.echo(f"user        {account.user_id}  ({account.status.value}, plan {account.plan})")
    balance = account.balance_cents
    click.echo(f"balance     {format_usd(balance)}  ({balance} credits)")
    available = account.available_cents(int(time.time() * 1000))
    click.echo(f"held        {account.held_cents}   available {available}")
    click.echo(f"lots        {len(account.lots)} with credits left (burn order), debt "
               f"{account.debt_cents}")
    for lot in account.lots:
        expires = iso_ms(lot.expires_at_ms) if lot.expires_at_ms is not None else "never"
        click.echo(f"  {transaction_id_str(lot.lot_id)}  {lot.source:<18} {lot.category.value:<11}"
                   f" p{lot.priority:<3} {lot.remaining_cents:>12} of {lot.original_cents:<12}"
                   f" held {lot.held_cents}  expires {expires}")
    click.echo(f"unbilled    {account.unbilled_micros} micro-credits")
    click.echo(f"lifetime    purchased {account.lifetime_purchased_cents}, granted "
               f"{account.lifetime_granted_cents}, used {account.lifetime_used_cents}")
    click.echo(f"entries     {account.seq}")
    for entry in page.entries:
        click.echo(f"  {transaction_id_str(entry.transaction_id)}  {entry.entry_type.value:<18}"
                   f" {entry.amount:>+12}  -> {entry.balance_after:>12}  "
                   f"{entry.source_key or ''}")
    if page.has_more:
        click.echo(f"  … {account.seq - len(page.entries)} older entries")


@main.group()
def credits() -> None:
    """Grant credits."""


@credits.command("add")
@click.argument("user")
@click.argument("amount", type=click.IntRange(AMOUNT_CENTS_MIN, AMOUNT_CENTS_MAX))
@click.option("--reason", default="", help="Shown in the user's ledger.")
@click.option("--type", "kind", type=click.Choice([kind.value for kind in ADMIN_GRANT_TYPES]),
              default=EntryType.BONUS.value, show_default=True)
@click.option("--idempotency-key", default=None,
              help="Repeat the command with the same key and it grants once.")
@click.option("--url", envvar="ZBILLING_URL", default=None,
              help="A running server's base URL (ZBILLING_URL); the admin key comes from "
                   "ADMIN_API_KEY. Without it the data directory is opened (server stopped).")
@data_dir_option
def credits_add(user: str, amount: int, reason: str, kind: str,  # noqa: PLR0917 - click
                idempotency_key: str | None,
                url: str | None, data_dir: Path) -> None:
    """Grant AMOUNT credits (1 credit = $0.01) to USER."""
    try:
        user_id = parse_user_id(user)
    except BillingError as error:
        fail(error.message)
    if url is not None:
        admin_key = os.environ.get("ADMIN_API_KEY")
        if not admin_key:
            fail("set ADMIN_API_KEY to add credits over the HTTP API")
        try:
            with BillingClient(url, admin_key=admin_key) as client:
                granted = client.add_credits(user_id, amount, reason=reason, type=kind,
                                             idempotency_key=idempotency_key)
        except BillingApiError as error:
            fail(f"{error.code}: {error.message}")
        except httpx.TransportError as error:
            fail(f"cannot reach {url}: {error}")
        transaction, balance = granted.transaction_id, granted.balance_cents
    else:
        result = on_data_dir(data_dir, lambda billing: billing.add_credits(
            user_id, amount, entry_type=EntryType(kind), description=reason,
            idempotency_key=idempotency_key), "stop the server or pass --url")
        transaction, balance = transaction_id_str(result.transaction_id), result.balance_cents
    click.echo(f"granted {amount} credits ({kind}) to {user_id}: transaction {transaction}, "
               f"balance {format_usd(balance)}")


@main.group()
def lago() -> None:
    """Lago: export dead letters, and a self-hosted deployment with Docker Compose."""


for _name, _command in lago_deployment.commands.items():
    lago.add_command(_command, _name)


@lago.command("dead-letters")
@data_dir_option
def lago_dead_letters(data_dir: Path) -> None:
    """Events Lago refused on their own, with Lago's answer."""
    with read_only_store(data_dir) as store:
        parked = store.dead_letters()
        depth = store.outbox_depth()
    click.echo(f"{len(parked)} dead letters, {depth} events waiting in the outbox")
    for event in parked:
        click.echo(f"  #{event.sequence} {event.event.get('transaction_id', 'customer')}  "
                   f"HTTP {event.status}: {event.reason[:200]}")


@lago.command("retry")
@data_dir_option
def lago_retry(data_dir: Path) -> None:
    """Put every dead letter back in the outbox (after fixing the cause in Lago)."""

    count = on_data_dir(data_dir, lambda billing: billing.requeue_dead_letters(),
                        "stop the server first")
    click.echo(f"{count} events back in the outbox; the exporter sends them on next start")


@main.group()
def webhooks() -> None:
    """Outbound webhooks: endpoints and the events they did not take in time."""


@webhooks.command("list")
@data_dir_option
def webhooks_list(data_dir: Path) -> None:
    """The registered endpoints, their event types and delivery cursors."""
    with read_only_store(data_dir) as store:
        endpoints = store.webhook_endpoints()
        last = store.last_webhook_sequence()
    click.echo(f"{len(endpoints)} endpoints; last event #{last}")
    for endpoint in endpoints:
        kinds = ", ".join(kind.value for kind in endpoint.event_types)
        click.echo(f"  {endpoint.endpoint_id}  {endpoint.url}  at #{endpoint.cursor}  [{kinds}]")


@webhooks.command("dead-letters")
@data_dir_option
@click.option("--endpoint", "endpoint_id", default=None, help="only this endpoint's")
def webhooks_dead_letters(data_dir: Path, endpoint_id: str | None) -> None:
    """Events an endpoint did not take within the retry window, with the last error."""
    with read_only_store(data_dir) as store:
        parked = store.webhook_dead_letters(endpoint_id)
    click.echo(f"{len(parked)} parked webhook events")
    for letter in parked:
        click.echo(f"  {letter.endpoint_id} #{letter.sequence} {letter.event['type']} "
                   f"{letter.event['id']}  {letter.attempts} attempts: {letter.last_error[:200]}")


@webhooks.command("resend")
@data_dir_option
@click.argument("endpoint_id")
@click.option("--sequence", "sequences", multiple=True, type=int,
              help="re-send only this parked event (repeatable); default: all of them")
def webhooks_resend(data_dir: Path, endpoint_id: str, sequences: tuple[int, ...]) -> None:
    """Put an endpoint's parked events back in the outbox, for that endpoint alone."""
    count = on_data_dir(data_dir, lambda billing: billing.webhooks.resend(
        endpoint_id, list(sequences) or None), "stop the server first (or use the admin API)")
    click.echo(f"{count} events back in the outbox for {endpoint_id}; delivered on next start")
