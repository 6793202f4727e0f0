"""A sample app for the testing guide: signing up defers a welcome email, whose task
defers a note to the admins now and a tips email for tomorrow."""

from __future__ import annotations

from datetime import timedelta

import msgspec

from pgworker import App, JobContext

app = App()

#: Stands in for an email service: what the tasks "sent".
OUTBOX: list[str] = []


class Welcome(msgspec.Struct):
    """The payload of send_welcome."""

    email: str
    name: str


@app.task("send_welcome")
def send_welcome(welcome: Welcome, ctx: JobContext) -> None:
    """Send the welcome email, then tell the admins and schedule tomorrow's tips."""
    if "@" not in welcome.email:
        raise ValueError(f"{welcome.email!r} is not an email address")
    OUTBOX.append(f"{welcome.email}: Welcome, {welcome.name}!")
    notify_admins.defer({"text": f"{welcome.name} signed up"})
    send_tips.defer({"email": welcome.email}, delay=timedelta(days=1))


@app.task("notify_admins")
async def notify_admins(payload: dict[str, str]) -> None:
    """Post a note to the admins (an async task)."""
    OUTBOX.append(f"admins: {payload['text']}")


@app.task("send_tips", queue="email")
def send_tips(payload: dict[str, str]) -> None:
    """Send the tips email."""
    OUTBOX.append(f"{payload['email']}: Tips for your first day")


def sign_up(email: str, name: str) -> None:
    """What the web view does: store the user (left out here), then defer the email."""
    send_welcome.defer(Welcome(email=email, name=name))
