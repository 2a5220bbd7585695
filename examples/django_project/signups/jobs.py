"""The jobs of the signups app: a Job dataclass and the function that runs it."""

from __future__ import annotations

from dataclasses import dataclass

import flowd


@dataclass
class WelcomeEmail(flowd.Job):
    signup_id: int


def send_welcome(task: flowd.Task[WelcomeEmail]) -> None:
    from signups.models import Signup

    signup = Signup.objects.get(pk=task.job.signup_id)
    if signup.welcomed:  # delivery is at least once: make the job idempotent
        return
    print(f"welcome mail to {signup.email} (message {task.id})", flush=True)
    signup.welcomed = True
    signup.save(update_fields=["welcomed"])
