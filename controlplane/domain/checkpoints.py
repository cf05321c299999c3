"""Signed checkpoints of the audit chain's head, kept outside the database.

A checkpoint says "at ``time`` the chain ended at event ``id`` with hash
``hash``, and keyed hashing began at ``keyed_from``", signed with HMAC-SHA256
under the audit key. It plays the part of a signed tree head in Certificate
Transparency (RFC 6962, section 3.5): whoever holds an older checkpoint can
tell whether the log they are shown still extends it. Checking the log
against checkpoints (:func:`check_against`) finds what the chain alone cannot:
a log wiped or cut back to an earlier event, with its head row reset to match,
and a history rewritten with recomputed hashes by someone who holds the key.

Each checkpoint is one JSON line; a file of them is append-only by intent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Checkpoint",
    "CheckpointProblem",
    "check_against",
    "parse_checkpoints",
    "sign_checkpoint",
]

_PURPOSE = b"turnout-audit-checkpoint-v1\n"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain head at one moment, and the HMAC that vouches for it."""

    id: int
    hash: str
    time: str
    keyed_from: int
    mac: str

    def document(self) -> dict[str, Any]:
        """Return the checkpoint as its JSON line's object."""
        return {
            "id": self.id,
            "hash": self.hash,
            "time": self.time,
            "keyed_from": self.keyed_from,
            "mac": self.mac,
        }

    def line(self) -> str:
        """Return the checkpoint as one JSON line (with its newline)."""
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":")) + "\n"


@dataclass(frozen=True, slots=True)
class CheckpointProblem:
    """A checkpoint the log does not honour: its line number and why."""

    line: int
    checkpoint_id: int | None
    reason: str


def _mac(secret: bytes, event_id: int, event_hash: str, time: str, keyed_from: int) -> str:
    message = json.dumps(
        {"hash": event_hash, "id": event_id, "keyed_from": keyed_from, "time": time},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hmac.new(secret, _PURPOSE + message.encode(), hashlib.sha256).hexdigest()


def sign_checkpoint(
    secret: bytes, event_id: int, event_hash: str, keyed_from: int, when: datetime
) -> Checkpoint:
    """Return the signed checkpoint of a chain that ends at ``event_id``."""
    time = when.astimezone(UTC).isoformat(timespec="microseconds")
    mac = _mac(secret, event_id, event_hash, time, keyed_from)
    return Checkpoint(event_id, event_hash, time, keyed_from, mac)


def parse_checkpoints(
    lines: Iterable[str], secret: bytes
) -> tuple[list[tuple[int, Checkpoint]], list[CheckpointProblem]]:
    """Return the checkpoints of ``lines`` whose HMAC verifies, with their line
    numbers, and a problem for every line that is malformed or not signed by
    ``secret`` (a forged or foreign checkpoint)."""
    good: list[tuple[int, Checkpoint]] = []
    problems: list[CheckpointProblem] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
            checkpoint = Checkpoint(
                id=int(value["id"]),
                hash=str(value["hash"]),
                time=str(value["time"]),
                keyed_from=int(value["keyed_from"]),
                mac=str(value["mac"]),
            )
        except (ValueError, KeyError, TypeError):
            problems.append(CheckpointProblem(number, None, "not a checkpoint line"))
            continue
        expected = _mac(
            secret, checkpoint.id, checkpoint.hash, checkpoint.time, checkpoint.keyed_from
        )
        if not hmac.compare_digest(expected, checkpoint.mac):
            problems.append(
                CheckpointProblem(
                    number, checkpoint.id, "the checkpoint's HMAC does not verify under this key"
                )
            )
            continue
        good.append((number, checkpoint))
    return good, problems


def check_against(
    checkpoints: Iterable[tuple[int, Checkpoint]],
    *,
    head_id: int,
    keyed_from: int,
    hash_of: Callable[[int], str | None],
) -> list[CheckpointProblem]:
    """Return every checkpoint the log contradicts.

    ``head_id`` and ``keyed_from`` describe the log as it is now, and
    ``hash_of(id)`` returns the stored hash of event ``id`` (None when there is
    no such event). The caller has verified the chain itself, so an event that
    still carries a checkpoint's hash vouches for every event before it.
    """
    problems: list[CheckpointProblem] = []
    for line, checkpoint in checkpoints:
        if checkpoint.keyed_from != keyed_from:
            problems.append(
                CheckpointProblem(
                    line,
                    checkpoint.id,
                    f"keyed hashing began at event {checkpoint.keyed_from} at {checkpoint.time}, "
                    f"the log now says {keyed_from}: its boundary was moved",
                )
            )
            continue
        if checkpoint.id == 0:
            continue
        if head_id < checkpoint.id:
            problems.append(
                CheckpointProblem(
                    line,
                    checkpoint.id,
                    f"the log ends at event {head_id} but at {checkpoint.time} it reached event "
                    f"{checkpoint.id}: it was truncated or wiped",
                )
            )
            continue
        stored = hash_of(checkpoint.id)
        if stored is None:
            problems.append(
                CheckpointProblem(
                    line,
                    checkpoint.id,
                    f"event {checkpoint.id}, checkpointed at {checkpoint.time}, is missing",
                )
            )
        elif not hmac.compare_digest(stored, checkpoint.hash):
            problems.append(
                CheckpointProblem(
                    line,
                    checkpoint.id,
                    f"event {checkpoint.id} no longer has the hash checkpointed at "
                    f"{checkpoint.time}: the log up to it was rewritten",
                )
            )
    return problems
