"""Plain records of the replay outbox: what publishing reads, without model instances.

A bulk replay reads the claimed dead letters in the claim's own statement (``replay``) and
publishes from these records; ``recover_replays`` publishes ``Replay`` rows. Both have the
same attribute names, so the publishing code takes either.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeAlias

from djcelery_ops.deadletter.models import DeadLetter, Replay


@dataclasses.dataclass(slots=True)
class Letter:
    """What publishing a replay reads of its dead letter: the same names as ``DeadLetter``'s
    fields, without a model instance (read by the claim itself, ``replay._outbox``)."""

    pk: int
    task_name: str
    args: Any
    kwargs: Any
    options: Any
    queue: str
    call_content_type: str
    call_content_encoding: str
    call_body: str
    call_body_base64: bool


# The columns a ``Letter`` is read from, in its fields' order.
LETTER_COLUMNS = ("id", *(field.name for field in dataclasses.fields(Letter)[1:]))


@dataclasses.dataclass(slots=True)
class OutboxEntry:
    """A replay to publish: the same names as a ``Replay`` row's, without a model instance."""

    new_task_id: str
    edits: dict[str, Any]
    dead_letter: Letter

    @property
    def dead_letter_id(self) -> int:
        return self.dead_letter.pk


AnyLetter: TypeAlias = DeadLetter | Letter
AnyReplay: TypeAlias = Replay | OutboxEntry
