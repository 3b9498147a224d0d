"""Count what crosses the wire and what fails, per round, by wrapping the server's Grid.

:class:`MeteredGrid` sits between the workflows and Flower's Grid, so it sees every message of every
workflow (plain FedAvg, SecAgg+'s stages, evaluation) without the workflows knowing. It also orders replies
by partition id, which makes aggregation (a floating-point sum over replies) independent of the order in
which clients happen to answer: a resumed run then ends with bit-identical weights. Given a stop request, it
waits for replies in short polls and raises :class:`~privmed.federation.interrupt.RunInterrupted` as soon as
the request is set (Ctrl-C on ``privmed federate``), where Flower's own grid would wait for ever.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid

from privmed.federation.interrupt import POLL_SECONDS, RunInterrupted


def message_bytes(message: Message) -> int:
    """Bytes of the arrays a message carries: serialized NumPy arrays, and the ``bytes`` values of its config
    records (SecAgg+ sends keys, key shares and the masked vectors that way); other config scalars are not
    counted."""
    if not message.has_content():
        return 0
    content = message.content
    arrays = sum(len(array.data) for record in content.array_records.values() for array in record.values())
    blobs = 0
    for record in content.config_records.values():
        for value in record.values():
            if isinstance(value, bytes):
                blobs += len(value)
            elif isinstance(value, list):
                blobs += sum(len(v) for v in value if isinstance(v, bytes))
    return arrays + blobs


def short_reason(reason: str, limit: int = 400) -> str:
    """The informative end of a Flower error reason (a client's exception message, not Ray's traceback)."""
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    if "Message:" in reason:
        reason = reason.rsplit("Message:", 1)[1]
    reason = " ".join(reason.split()).rstrip("'>").strip()
    return reason if len(reason) <= limit else "..." + reason[-limit:]


@dataclass
class RoundTraffic:
    """What one round sent and received."""

    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    messages_up: int = 0
    failures: int = 0
    #: partition ids whose reply was an error or never came
    failed_partitions: list[int] = field(default_factory=list)
    failure_reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "messages_down": self.messages_down,
            "messages_up": self.messages_up,
            "failures": self.failures,
            "failed_partitions": sorted(set(self.failed_partitions)),
            "failure_reasons": self.failure_reasons,
        }


class MeteredGrid(Grid):
    """A :class:`~flwr.serverapp.Grid` that delegates to ``inner`` and meters traffic per round.

    Parameters
    ----------
    inner
        Flower's Grid.
    round_timeout
        Seconds to wait for the replies of one ``send_and_receive`` when the caller sets no timeout
        (``None``: wait as long as Flower does).
    stop
        When set, the waits end: :meth:`send_and_receive` and :meth:`check_stop` raise
        :class:`~privmed.federation.interrupt.RunInterrupted`.
    """

    def __init__(self, inner: Grid, *, round_timeout: float | None = None, stop: threading.Event | None = None) -> None:
        self.inner = inner
        self.round_timeout = round_timeout
        self.stop = stop
        #: node id -> partition id, from the handshake
        self.partition_of: dict[int, int] = {}
        self._lock = threading.Lock()
        self._current = RoundTraffic()

    # -- bookkeeping -----------------------------------------------------------------------------
    def begin_round(self) -> None:
        """Start counting a new round."""
        with self._lock:
            self._current = RoundTraffic()

    def end_round(self) -> RoundTraffic:
        """The traffic counted since :meth:`begin_round`."""
        with self._lock:
            traffic, self._current = self._current, RoundTraffic()
        return traffic

    def _count_out(self, messages: list[Message]) -> None:
        with self._lock:
            self._current.messages_down += len(messages)
            self._current.bytes_down += sum(message_bytes(m) for m in messages)

    def _count_in(self, sent: list[Message], replies: list[Message]) -> None:
        with self._lock:
            traffic = self._current
            traffic.messages_up += len(replies)
            traffic.bytes_up += sum(message_bytes(m) for m in replies)
            answered = set()
            for reply in replies:
                answered.add(reply.metadata.src_node_id)
                if reply.has_error():
                    traffic.failures += 1
                    traffic.failed_partitions.append(self.partition_of.get(reply.metadata.src_node_id, -1))
                    traffic.failure_reasons.append(short_reason(str(reply.error.reason)))
            for message in sent:
                if message.metadata.dst_node_id not in answered:
                    traffic.failures += 1
                    traffic.failed_partitions.append(self.partition_of.get(message.metadata.dst_node_id, -1))
                    traffic.failure_reasons.append("no reply before the round timeout (node gone or too slow)")

    def _sorted(self, replies: Iterable[Message]) -> list[Message]:
        return sorted(
            replies,
            key=lambda m: (self.partition_of.get(m.metadata.src_node_id, 1 << 30), m.metadata.src_node_id),
        )

    def check_stop(self) -> None:
        """Raise :class:`~privmed.federation.interrupt.RunInterrupted` if a stop was requested."""
        if self.stop is not None and self.stop.is_set():
            raise RunInterrupted("stop requested")

    def _exchange(self, messages: list[Message], timeout: float | None) -> list[Message]:
        """Flower's push-then-poll loop, checking the stop request between polls."""
        if self.stop is None:
            return list(self.inner.send_and_receive(messages, timeout=timeout))
        self.check_stop()
        pending = set(self.inner.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.inner.pull_messages(pending))
            replies += got
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            if self.stop.wait(POLL_SECONDS):
                self.check_stop()
        return replies

    # -- Grid interface --------------------------------------------------------------------------
    def set_run(self, run_id: Any) -> None:
        self.inner.set_run(run_id)

    @property
    def run(self) -> Any:
        return self.inner.run

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        return self.inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._count_out(messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        with self._lock:
            self._current.messages_up += len(replies)
            self._current.bytes_up += sum(message_bytes(m) for m in replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._count_out(messages)
        if timeout is None:
            timeout = self.round_timeout
        replies = self._exchange(messages, timeout)
        self._count_in(messages, replies)
        return self._sorted(replies)
