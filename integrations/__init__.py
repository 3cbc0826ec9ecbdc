"""The outside services: Stripe (payments, webhooks, auto-refill worker) and Lago (export
client and exporter, webhooks). Each talks to its service over HTTP (the `stripe` library,
httpx) and to the engine only through the `actors` facades.

May import `actors`, `storage` and `engine`; never `api`.
"""
