"""Outbound webhooks: delivery of the engine's notifications to registered endpoints."""
