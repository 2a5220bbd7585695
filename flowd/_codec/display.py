"""How a message's fields read for people (the dashboard, ``flowd dlq list``): a Django
task's message (flowd.contrib.django.tasks) as its task called with its arguments."""

from __future__ import annotations

__all__ = ["TASK_FIELDS", "task_rows"]

#: The fields every Django task's message has.
TASK_FIELDS = ("task", "result_id", "args", "kwargs")
#: Fields of a task's message shown as they are, after the call.
_AS_IS = ("queue", "enqueued_at")


def task_rows(fields: dict[str, str | bytes]) -> list[tuple[str, str]] | None:
    """(label, text) rows of a Django task's message: ``task`` (its module path called
    with its arguments, e.g. ``shop.tasks.charge(7, **{"amount":3})``), ``result id``,
    its queue and enqueue time; None for any other message.

    Values are as flowd's dead letters hold them: ``str`` when valid UTF-8, else
    ``bytes``, which no task message has.
    """
    texts: dict[str, str] = {}
    for name in TASK_FIELDS:
        value = fields.get(name)
        if not isinstance(value, str):
            return None
        texts[name] = value
    args = texts["args"].removeprefix("[").removesuffix("]")
    kwargs = texts["kwargs"].removeprefix("{").removesuffix("}")
    call = ", ".join(part for part in (args, f"**{{{kwargs}}}" if kwargs else "") if part)
    rows = [("task", f"{texts['task']}({call})"), ("result id", texts["result_id"])]
    rows += [(name, str(fields[name])) for name in _AS_IS if isinstance(fields.get(name), str)]
    return rows
