"""Durable storage: the `Store` protocol, its LMDB implementation with one writer per stored
record type, the key layout, the CBOR record codecs, the data-directory lock, verify.

May import `engine` only.
"""
