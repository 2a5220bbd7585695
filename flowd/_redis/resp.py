"""Commands framed as RESP by hand, for a session to send as they are.

redis-py frames each argument on its own (about half a microsecond each); a command
of many short ASCII arguments, such as a script call carrying a batch, is framed
here in one join and one encode.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["frame"]


def frame(args: Sequence[str | bytes | int]) -> bytes:
    """``args`` as one RESP array of bulk strings (ints as their decimal text)."""
    if not any(type(arg) is bytes for arg in args):
        parts = [f"*{len(args)}\r\n"]
        for arg in args:
            text = arg if type(arg) is str else str(arg)
            size = len(text) if text.isascii() else len(text.encode())
            parts.append(f"${size}\r\n{text}\r\n")
        return "".join(parts).encode()
    chunks = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        chunks.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(chunks)
