"""One task on DashScope's inference endpoint (CosyVoice, Sambert), as a state machine.

The reference's order: the client sends `run-task`; the service answers `task-started`; a
duplex task (CosyVoice) then takes its text in `continue-task`s and ends with the client's
`finish-task`; a streaming-out task (Sambert) carries its whole text in the `run-task` and
ends by itself. Audio comes as binary frames; `task-finished` ends the task and leaves the
connection ready for the next one; `task-failed` ends it with the service's reason.

Text and the finish may be given before the service has started the task: they are held
and released by `task-started` (a `continue-task` sent earlier fails the task).
"""

from __future__ import annotations

import enum
import json
import logging
from typing import Any

from ..errors import SynthesisError, TaskFailed
from . import Audio, Event, Finished, ProtocolMisuse, Started

log = logging.getLogger(__name__)


class TaskState(enum.Enum):
    NEW = enum.auto()  # nothing sent
    STARTING = enum.auto()  # run-task sent, task-started not yet received
    STARTED = enum.auto()  # text may be sent
    FINISHED = enum.auto()  # task-finished: the connection can take the next task
    FAILED = enum.auto()  # task-failed or a message no protocol has: the connection is spent


def message(action: str, task_id: str, streaming: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A client message of the task protocol."""
    return {
        "header": {"action": action, "task_id": task_id, "streaming": streaming},
        "payload": payload,
    }


def run_task(
    task_id: str, model: str, parameters: dict[str, Any], *, text: str | None = None
) -> dict[str, Any]:
    """The run-task of a speech synthesis task: duplex with no text (the text follows in
    continue-tasks), or streaming "out" with the whole text in its input."""
    return message(
        "run-task",
        task_id,
        "duplex" if text is None else "out",
        {
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "model": model,
            "parameters": parameters,
            "input": {} if text is None else {"text": text},
        },
    )


def continue_task(task_id: str, text: str) -> dict[str, Any]:
    return message("continue-task", task_id, "duplex", {"input": {"text": text}})


def finish_task(task_id: str) -> dict[str, Any]:
    return message("finish-task", task_id, "duplex", {"input": {}})


class Task:
    """One task: `start()`, then `send_text()` pieces and `finish()` (duplex), feeding every
    frame received to `receive()` and sending what `data_to_send()` returns after each call.

    `receive` returns the task's events (Started, Audio, Finished); it raises TaskFailed when
    the service fails the task, SynthesisError when it sends what no protocol has."""

    def __init__(self, task_id: str, run: dict[str, Any]) -> None:
        self.task_id = task_id
        self.state = TaskState.NEW
        self._run = run
        self._duplex = run["header"]["streaming"] == "duplex"
        self._outgoing: list[dict[str, Any]] = []
        self._held: list[dict[str, Any]] = []  # said before task-started
        self._finishing = False

    # --- what the caller says ------------------------------------------------------------

    def start(self) -> None:
        if self.state is not TaskState.NEW:
            raise ProtocolMisuse(f"start() in state {self.state.name}")
        self._outgoing.append(self._run)
        self.state = TaskState.STARTING

    def send_text(self, text: str) -> None:
        """One continue-task (duplex tasks only), sent once the task has started."""
        if not self._duplex:
            raise ProtocolMisuse("a streaming-out task carries its text in the run-task")
        if self._finishing:
            raise ProtocolMisuse("send_text() after finish()")
        self._say(continue_task(self.task_id, text))

    def finish(self) -> None:
        """No more text: finish-task for a duplex task (a streaming-out task ends by itself)."""
        if self._finishing:
            return
        self._finishing = True
        if self._duplex:
            self._say(finish_task(self.task_id))

    def _say(self, msg: dict[str, Any]) -> None:
        if self.state is TaskState.NEW:
            raise ProtocolMisuse("text before start()")
        if self.state in (TaskState.FINISHED, TaskState.FAILED):
            raise ProtocolMisuse(f"text in state {self.state.name}")
        (self._outgoing if self.state is TaskState.STARTED else self._held).append(msg)

    @property
    def ended(self) -> bool:
        """The service ended it as asked (task-finished, session.finished)."""
        return self.state is TaskState.FINISHED

    def data_to_send(self) -> list[str]:
        """The messages to send now, in order, as text frames."""
        out, self._outgoing = self._outgoing, []
        return [json.dumps(m) for m in out]

    # --- what the service says -----------------------------------------------------------

    def receive(self, frame: str | bytes) -> Event | None:
        if self.state in (TaskState.NEW, TaskState.FINISHED, TaskState.FAILED):
            raise ProtocolMisuse(f"receive() in state {self.state.name}")
        if isinstance(frame, bytes):
            return Audio(frame)
        try:
            header = json.loads(frame)["header"]
            event = str(header["event"])
        except (ValueError, KeyError, TypeError):
            self.state = TaskState.FAILED
            raise SynthesisError("DashScope sent a message that is not a protocol event") from None
        if header.get("task_id") not in (None, self.task_id):
            # Another task's event (one that ended before ours began): not about this task.
            log.warning(
                "event %s for task %s during task %s", event, header["task_id"], self.task_id
            )
            return None
        if event == "task-failed":
            self.state = TaskState.FAILED
            code = header.get("error_code") or "unknown"
            text = header.get("error_message") or "no message"
            raise TaskFailed(f"DashScope task failed: {code}: {text}")
        if event == "task-started" and self.state is TaskState.STARTING:
            self.state = TaskState.STARTED
            self._outgoing += self._held
            self._held = []
            return Started()
        if event == "task-finished":
            self.state = TaskState.FINISHED
            return Finished()
        return None  # result-generated and whatever the service adds later

    @property
    def reusable(self) -> bool:
        """The service ended the task cleanly: its connection can take the next one."""
        return self.state is TaskState.FINISHED
