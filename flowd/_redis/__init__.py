"""The Redis boundary: every command, reply and key name flowd uses goes through here.

Imports nothing of flowd but ``errors`` and ``_codec`` (see flowd/__init__).
"""
