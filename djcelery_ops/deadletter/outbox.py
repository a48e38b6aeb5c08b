"""Publishing replays from the outbox: the ``Replay`` rows a claim committed.

A replay's task id is decided and committed with its claim (``replay.replay``), so the
``Replay`` row is an outbox entry: the message to send, under which id. Publishing sends
it with that id and then marks the row ``published_at``. Two faults leave entries that are
committed but not marked:

- the broker connection drops mid-batch: the message in flight may or may not have
  reached the broker (an error after ``publish`` was called proves nothing), and the
  messages after it were not sent;
- the process dies between the commit and the publish, or before marking.

``recover_replays`` publishes such entries again, with the SAME task id. A copy that did
reach the broker and a republished copy are the same task id, and an ``OpsTask`` runs a
replayed task id at most once (``djcelery_ops.idempotency`` keys a replayed delivery by its
task id, in lease mode), so publishing again is safe where not publishing would lose it.
"""

from __future__ import annotations

import base64
import datetime
import importlib
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery import current_app
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from djcelery_ops.conf import ops_settings
from djcelery_ops.crypto import unseal
from djcelery_ops.db import in_values
from djcelery_ops.deadletter.call import accepted_content_types, decode_call, serializer_name
from djcelery_ops.deadletter.entries import AnyLetter, AnyReplay
from djcelery_ops.deadletter.models import Replay
from djcelery_ops.deadletter.sealed import Payload, PayloadKeyError, open_payload
from djcelery_ops.signals import replays_published
from djcelery_ops.wire import REPLAY_HEADER

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("djcelery_ops.deadletter")


class ReplayError(Exception):
    """Publishing stopped (broker unreachable). Nothing is lost: the replays not confirmed
    stay in the outbox and the next ``replay_dead_letters`` run (or ``--recover``)
    publishes them with the same task ids."""

    def __init__(self, message: str, *, published: int, unconfirmed: int) -> None:
        super().__init__(message)
        self.published = published  # confirmed by the broker
        self.unconfirmed = unconfirmed  # in flight when it failed, or never sent
        self.outcome: Any = None  # set by ``replay()``: what the whole call had done

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled by Celery (a retry's or a result's exception): rebuilt with its keywords.
        return _replay_error, (str(self), self.published, self.unconfirmed)


def _replay_error(message: str, published: int, unconfirmed: int) -> ReplayError:
    return ReplayError(message, published=published, unconfirmed=unconfirmed)


def celery_app() -> Celery:
    """The project's Celery app: ``DJCELERY_OPS_DEAD_LETTER_CELERY_APP`` or the current one.

    Raises ``ImproperlyConfigured`` rather than publish with Celery's fallback app (to its
    default broker, amqp on localhost) or with an app that has no broker URL."""
    path = ops_settings.DEAD_LETTER_CELERY_APP
    app: Celery = import_string(path) if path else current_app
    problem = celery_app_problem(app)
    if problem:
        raise ImproperlyConfigured(problem)
    return app


def celery_app_problem(app: Celery) -> str | None:
    """Why publishing with ``app`` would not reach the project's broker (check E007)."""
    state = importlib.import_module("celery._state")
    app = getattr(app, "_get_current_object", lambda: app)()  # ``current_app`` is a proxy
    if app is state.default_app and app.main == "default":
        return (
            "the current Celery app is Celery's fallback app, not the project's: the "
            "project's Celery app is not loaded"
        )
    if not (app.conf.broker_url or app.conf.broker_write_url):  # Celery would use amqp://
        return f"the Celery app {app.main!r} has no broker URL"
    return None


def publish_options(
    letter: AnyLetter, queue: str | None = None, payload: Payload | None = None
) -> dict[str, Any]:
    """Routing and headers of the original message, for a new task id and no ETA/expiry."""
    stored = (payload or open_payload(letter)).options
    headers = dict(stored.get("headers") or {})
    headers[REPLAY_HEADER] = str(letter.pk)
    options: dict[str, Any] = {"headers": headers, "retries": 0, "add_to_parent": False}
    target = queue or stored.get("queue") or letter.queue
    if target:
        options["queue"] = target
    elif stored.get("routing_key"):
        options["exchange"] = stored.get("exchange") or ""
        options["routing_key"] = stored["routing_key"]
    for key in ("priority", "root_id", "parent_id", "group_id", "shadow", "ignore_result"):
        if stored.get(key) is not None:
            options[key] = stored[key]
    for key in ("time_limit", "soft_time_limit"):
        options[key] = stored.get(key)
    return options


def workflow_options(letter: AnyLetter, payload: Payload | None = None) -> dict[str, Any]:
    """The rest of the workflow the original message carried, for ``send_task``: the
    remaining ``chain`` (reversed, as Celery carries it), ``link`` and ``link_error``
    signatures, and the ``group_index``. A workflow over the size cap was not kept (a
    marker stands in for it): nothing is passed on."""
    workflow = (payload or open_payload(letter)).options.get("workflow")
    if not isinstance(workflow, dict):
        return {}
    options: dict[str, Any] = {}
    if workflow.get("group_index") is not None:
        options["group_index"] = workflow["group_index"]
    if workflow.get("__truncated__"):
        return options
    for key, option in (("chain", "chain"), ("callbacks", "link"), ("errbacks", "link_error")):
        if workflow.get(key):
            options[option] = [dict(sig) for sig in workflow[key]]
    return options


def _edited(replay: AnyReplay, field: str, stored: Any) -> Any:
    """The value the operator gave for ``field`` (edit and replay), else the stored one."""
    edit = (replay.edits or {}).get(field)
    return unseal(edit["new"]) if isinstance(edit, dict) and "new" in edit else stored


def _edited_call(
    app: Celery, replay: AnyReplay, payload: Payload
) -> tuple[Any, Any, dict[str, Any]]:
    """Args, kwargs and serializer to publish: the kept call unless the operator edited it.

    The kept call is decoded (with the app's ``accept_content``) and published with the
    serializer it was encoded with, so the task gets the original values and types.
    """
    letter = replay.dead_letter
    edits = replay.edits or {}
    if not letter.call_content_type:
        return _edited(replay, "args", payload.args), _edited(replay, "kwargs", payload.kwargs), {}
    serializer = {"serializer": serializer_name(letter.call_content_type)}
    if "args" in edits and "kwargs" in edits:
        return _edited(replay, "args", None), _edited(replay, "kwargs", None), serializer
    args, kwargs = decode_call(
        payload.call_body,
        content_type=letter.call_content_type,
        content_encoding=letter.call_content_encoding,
        base64_body=letter.call_body_base64,
        accept=accepted_content_types(app.conf.accept_content),
    )
    return _edited(replay, "args", args), _edited(replay, "kwargs", kwargs), serializer


def _send_original(app: Celery, replay: AnyReplay, producer: Any, payload: Payload) -> None:
    """The never-decoded body, unchanged, with its headers, under the replay's task id."""
    letter = replay.dead_letter
    stored = payload.options
    headers = dict(stored.get("message_headers") or {})
    headers.update(id=replay.new_task_id, retries=0, eta=None, expires=None)
    headers[REPLAY_HEADER] = str(letter.pk)
    queue = app.amqp.queues[_edited(replay, "queue", None) or stored.get("queue") or letter.queue]
    producer.publish(
        base64.b64decode(stored["raw_body"]),
        exchange=queue.exchange,
        routing_key=queue.routing_key,
        declare=[queue],
        content_type=stored.get("content_type"),
        content_encoding=stored.get("content_encoding"),
        headers=headers,
        correlation_id=replay.new_task_id,
        priority=stored.get("priority"),
        retry=app.conf.task_publish_retry,
        retry_policy=app.conf.task_publish_retry_policy,
    )


def _send(app: Celery, replay: AnyReplay, producer: Any) -> None:
    letter = replay.dead_letter
    payload = open_payload(letter)  # PayloadKeyError: the key was lost since the claim
    if (replay.edits or {}).get("raw_body"):
        _send_original(app, replay, producer, payload)
        return
    args, kwargs, serializer = _edited_call(app, replay, payload)
    app.send_task(
        letter.task_name,
        args=args,
        kwargs=kwargs,
        task_id=replay.new_task_id,
        producer=producer,
        **serializer,
        **publish_options(letter, _edited(replay, "queue", None), payload),
        **workflow_options(letter, payload),
    )


@contextmanager
def confirming_producer(app: Celery) -> Iterator[Any]:
    """A producer whose ``publish`` returns only once the broker has the message.

    Redis answers every LPUSH, so a publish that returned is stored. AMQP does not answer
    ``basic.publish`` unless publisher confirms are on: a publish returns as soon as its
    bytes are written, and a connection cut just after loses messages already counted as
    sent (and marked published, never sent again). Over AMQP the replays get a connection
    of their own with confirms (``confirm_publish``), unless the app has them already.
    """
    confirmed = app.conf.broker_transport_options.get("confirm_publish")
    options = {"confirm_publish": True}
    with app.connection_for_write(transport_options=options) as own:  # connects on use
        if own.transport.driver_type == "amqp" and not confirmed:
            yield app.amqp.Producer(own)
            return
    with app.producer_or_acquire() as producer:
        yield producer


def publish_replays(replays: Iterable[AnyReplay], app: Celery | None = None) -> int:
    """Send each replay's message with its task id, then mark the sent ones published.

    Returns how many the broker confirmed; raises ``ReplayError`` when the broker fails
    (those confirmed before are marked; the others stay in the outbox).
    """
    rows = list(replays)
    try:
        app = app or celery_app()
    except ImproperlyConfigured as exc:  # nothing sent: the rows stay in the outbox
        raise ReplayError(str(exc), published=0, unconfirmed=len(rows)) from exc
    sent: list[str] = []
    try:
        with confirming_producer(app) as producer:
            for replay in rows:
                _send(app, replay, producer)
                sent.append(replay.new_task_id)
    except Exception as error:
        _mark_published(sent)
        left = len(rows) - len(sent)
        _announce(published=len(sent), unconfirmed=left)
        logger.error("replay publish failed after %d of %d: %r", len(sent), len(rows), error)
        cause = f"the broker failed after {len(sent)} of {len(rows)} replays ({error})"
        if isinstance(error, PayloadKeyError):
            cause = f"stopped after {len(sent)} of {len(rows)} replays: {error}"
        raise ReplayError(
            f"{cause}; the "
            f"{left} not confirmed stay in the outbox and are published again, with the "
            "same task ids, by the next replay_dead_letters run",
            published=len(sent),
            unconfirmed=left,
        ) from error
    _mark_published(sent)
    _announce(published=len(sent), unconfirmed=0)
    return len(sent)


def _announce(*, published: int, unconfirmed: int) -> None:
    replays_published.send_robust(
        publish_replays, published=published, unconfirmed=unconfirmed, skipped=0
    )


def _mark_published(task_ids: list[str]) -> None:
    """Best effort: an unmarked replay is only published again, never lost."""
    if not task_ids:
        return
    try:
        sent = Replay.objects.filter(new_task_id__in=in_values(task_ids, "text"))
        sent.update(published_at=timezone.now())
    except (DatabaseError, InterfaceError) as error:
        logger.warning("%d replays published but not marked (%s)", len(task_ids), error)


def interrupted_replays(
    older_than: float | None = None, *, run_id: str | None = None
) -> QuerySet[Replay]:
    """Replays committed but not confirmed published, for ``older_than`` seconds at least
    (default ``DJCELERY_OPS_DEAD_LETTER_REPLAY_RECOVER_AFTER``): a younger one may still be
    on its way out of another process. ``run_id``: only those of that run."""
    seconds = ops_settings.DEAD_LETTER_REPLAY_RECOVER_AFTER if older_than is None else older_than
    cutoff = timezone.now() - datetime.timedelta(seconds=float(seconds))
    rows = Replay.objects.filter(
        outcome=Replay.Outcome.PENDING, published_at__isnull=True, created_at__lte=cutoff
    )
    return rows if run_id is None else rows.filter(run_id=run_id)


def recover_replays(
    *,
    older_than: float | None = None,
    batch_size: int | None = None,
    app: Celery | None = None,
    run_id: str | None = None,
) -> int:
    """Publish interrupted replays again with their own task ids; returns how many."""
    size = batch_size or ops_settings.DEAD_LETTER_REPLAY_BATCH_SIZE
    recovered = 0
    for batch in _batches(interrupted_replays(older_than, run_id=run_id), size):
        recovered += publish_replays(batch, app)
    return recovered


def _batches(rows: QuerySet[Replay], size: int) -> Iterator[list[Replay]]:
    last = 0
    while True:
        batch = list(rows.filter(pk__gt=last).select_related("dead_letter").order_by("pk")[:size])
        if not batch:
            return
        yield batch
        last = batch[-1].pk
