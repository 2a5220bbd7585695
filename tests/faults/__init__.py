"""The fault suite: flowd under SIGKILLed workers, killed and unreachable Redis servers,
OOM and READONLY replies, and hung jobs.

Every scenario ends with an exact account, taken from Redis itself and from the
jobs' own records (see :mod:`tests.faults.accounting`), printed and asserted.
"""
