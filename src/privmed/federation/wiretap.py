"""What a client sends in the clear: a client mod that writes down every reply as it leaves the node.

For audits and tests of the threat model (``docs/threat-model.md``): under DP nothing computed from private
data without noise may reach the server. :class:`Wiretap` sits outside every other mod (pass it to
:func:`privmed.federation.client_app.make_client_app` as an ``outer_mod``), so it sees exactly what the
server receives: the metrics and config records of each reply in full, and the arrays only as their names
(masked or noised vectors are the mechanism's output; their content is checked elsewhere).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def clear_content(message: Message) -> dict[str, Any]:
    """The readable part of a message: its type, config and metric records, and the names of its arrays."""
    content = message.content
    return {
        "message_type": message.metadata.message_type,
        "config_records": {
            name: {k: _plain(v) for k, v in record.items()} for name, record in content.config_records.items()
        },
        "metric_records": {name: dict(record) for name, record in content.metric_records.items()},
        "array_records": {name: sorted(record) for name, record in content.array_records.items()},
    }


class ReplyTap:
    """Client mod base: hand each successful reply, as it leaves the node, to :meth:`write`.

    Subclasses say what to keep; this class keeps the part they share (call the inner mods, skip error replies,
    create ``folder``, name the client by its partition id).

    Parameters
    ----------
    folder
        Where to write; created when missing.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def __call__(self, message: Message, context: Context, call_next: Callable[[Message, Context], Message]) -> Message:
        reply = call_next(message, context)
        if reply.has_error():
            return reply
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        partition = context.node_config.get("partition-id", message.metadata.dst_node_id)
        self.write(message, reply, folder, partition)
        return reply

    def write(self, message: Message, reply: Message, folder: Path, partition: Any) -> None:
        """Keep what this tap records of ``reply`` (the answer to ``message``) in ``folder``."""
        raise NotImplementedError


class Wiretap(ReplyTap):
    """Client mod: write each reply's :func:`clear_content` to ``folder/<partition>-<n>.json``."""

    def write(self, message: Message, reply: Message, folder: Path, partition: Any) -> None:
        index = len(list(folder.glob(f"{partition}-*.json")))
        (folder / f"{partition}-{index:04d}.json").write_text(json.dumps(clear_content(reply), default=str))
