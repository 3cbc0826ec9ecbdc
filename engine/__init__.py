"""The pure domain: money, ids, accounts, ledger entries, pricing, plans, errors, and the
transitions `(account, command, context) → Transition`. No I/O, no clock, no trio.

Imports nothing of ours outside `engine`. A feature is one module holding its commands,
records, replies, transitions and a `HANDLERS` table that `transitions.py` merges; balance
changes go through `posting.post_entry`; stored record types are listed in `records.py`.
"""
