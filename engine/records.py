"""Every record a transition may hand to the journal, in one place.

`StoredRecord` is what the store writes (each type has exactly one writer there, checked at
import); `OutboxOnly` records are not stored themselves but become Lago outbox rows in the
same commit. A new record type is one line here and one writer in storage/.
"""

from __future__ import annotations

from engine.commands import KeyRecord, UsageEventRecord, WebhookMarker
from engine.deadlines import Deadline
from engine.export import AccountOpened, OutboxAck, RequeueParked
from engine.ledger import LedgerEntry
from engine.notifications import Notification
from engine.payments import RefillIntent, RefillResolved
from engine.reservations import Reservation
from engine.subscriptions import LagoMirror
from engine.webhooks import RequeueWebhooks, WebhookAck, WebhookEndpoint

StoredRecord = (
    LedgerEntry | KeyRecord | UsageEventRecord | WebhookMarker | Reservation | RefillIntent
    | RefillResolved | Deadline | OutboxAck | RequeueParked | Notification | WebhookEndpoint
    | WebhookAck | RequeueWebhooks
)
OutboxOnly = AccountOpened | LagoMirror
AnyRecord = StoredRecord | OutboxOnly
