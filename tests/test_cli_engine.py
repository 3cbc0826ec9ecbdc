"""The operator CLI's data-directory verbs: verify, backup, accounts show, lago dead letters."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import trio
from click.testing import CliRunner
from msgspec.structs import replace

from actors.runtime import open_billing
from api.cli import main
from engine.metering import UsageRequest
from engine.usage import LlmTokens
from integrations.lago.client import LagoClient
from integrations.lago.exporter import lago_exporter
from storage.lmdb_store import LmdbStore
from storage.store import CommitBatch
from tests.conftest import new_user
from tests.fake_lago import FakeLago


def seed(data_dir: Path, pricing) -> str:
    user = new_user()

    async def fill() -> None:
        async with open_billing(data_dir, pricing=pricing) as billing:
            await billing.open_account(user)
            await billing.add_credits(user, 500)
            for index in range(3):
                await billing.report_usage(UsageRequest(event_id=f"cli-{index}", user_id=user,
                                                        cost_cents=7))

    trio.run(fill)
    return str(user)


def test_verify_reports_a_clean_ledger_and_every_violation(tmp_path, pricing):
    data_dir = tmp_path / "data"
    user = seed(data_dir, pricing)
    runner = CliRunner()
    clean = runner.invoke(main, ["verify", "--data-dir", str(data_dir)])
    assert clean.exit_code == 0, clean.output
    assert "1 accounts, 4 entries" in clean.output
    assert "ledger consistent" in clean.output
    # Corrupt the balance behind the engine's back.
    store = LmdbStore(data_dir)
    account = store.get_account(uuid.UUID(user))
    store.commit(CommitBatch([replace(account, balance_cents=account.balance_cents + 1)], []))
    store.close()
    broken = runner.invoke(main, ["verify", "--data-dir", str(data_dir)])
    assert broken.exit_code == 1
    assert "invariant 1" in broken.output
    assert "invariant 4" in broken.output


def test_backup_makes_a_verifiable_copy_and_refuses_an_existing_destination(tmp_path, pricing):
    data_dir = tmp_path / "data"
    seed(data_dir, pricing)
    runner = CliRunner()
    copy = tmp_path / "copy"
    made = runner.invoke(main, ["backup", str(copy), "--data-dir", str(data_dir)])
    assert made.exit_code == 0, made.output
    checked = runner.invoke(main, ["verify", "--data-dir", str(copy)])
    assert checked.exit_code == 0
    assert "4 entries" in checked.output
    again = runner.invoke(main, ["backup", str(copy), "--data-dir", str(data_dir)])
    assert again.exit_code == 2
    assert "exists" in again.output


def test_accounts_show_prints_the_account_and_its_entries(tmp_path, pricing):
    data_dir = tmp_path / "data"
    user = seed(data_dir, pricing)
    runner = CliRunner()
    shown = runner.invoke(main, ["accounts", "show", user, "--data-dir", str(data_dir),
                                 "--limit", "2"])
    assert shown.exit_code == 0, shown.output
    assert "$4.79" in shown.output
    assert "cli-2" in shown.output
    assert "2 older entries" in shown.output
    # Its one lot: the bonus of 500 with 479 left, promotional, never expiring.
    assert "1 with credits left (burn order), debt 0" in shown.output
    assert re.search(r"bonus +promotional +p50 +479 of 500 +held 0  expires never",
                     shown.output)
    assert runner.invoke(main, ["accounts", "show", "not-a-uuid", "--data-dir",
                                str(data_dir)]).exit_code == 2
    missing = runner.invoke(main, ["accounts", "show", str(new_user()), "--data-dir",
                                   str(data_dir)])
    assert missing.exit_code == 2
    assert "no account" in missing.output
    nowhere = runner.invoke(main, ["verify", "--data-dir", str(tmp_path / "nothing")])
    assert nowhere.exit_code == 2


def test_lago_dead_letters_are_listed_and_requeued(tmp_path, pricing):
    data_dir = tmp_path / "data"
    lago = FakeLago()
    lago.reject.add("bad:llm_output_tokens")
    user = new_user()

    async def export_with_a_refusal() -> None:
        exporter = lago_exporter(LagoClient(lago.url, lago.api_key))
        async with open_billing(data_dir, pricing=pricing, exporter=exporter) as billing:
            await billing.open_account(user)
            await billing.add_credits(user, 100)
            await billing.report_usage(UsageRequest(
                event_id="bad", user_id=user, metric=LlmTokens("openai", "gpt-4o", 5, 5)))
            with trio.fail_after(30):
                while billing.export_backlog():
                    await trio.sleep(0.05)

    trio.run(export_with_a_refusal)
    runner = CliRunner()
    listed = runner.invoke(main, ["lago", "dead-letters", "--data-dir", str(data_dir)])
    assert listed.exit_code == 0, listed.output
    assert "1 dead letters" in listed.output
    assert "bad:llm_output_tokens" in listed.output
    assert "HTTP 422" in listed.output
    retried = runner.invoke(main, ["lago", "retry", "--data-dir", str(data_dir)])
    assert retried.exit_code == 0, retried.output
    assert "1 events back in the outbox" in retried.output
    after = runner.invoke(main, ["lago", "dead-letters", "--data-dir", str(data_dir)])
    assert "0 dead letters, 1 events waiting" in after.output
