"""The trio runtime: one single-writer actor per active account (`system`), the journal's
group commit (`journal`), the one deadline scheduler (`deadlines`), metrics, and the facades
(`Billing`, `Payments`, `Subscriptions`) that API, CLI and integrations call.

May import `engine` and `storage`; never `api` or `integrations`.
"""
