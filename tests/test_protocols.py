"""The DashScope protocols without a socket: frames in, events and messages out."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_tts.errors import SynthesisError, TaskFailed
from edge_tts.protocols import Audio, Finished, ProtocolMisuse, SentenceDone, Started
from edge_tts.protocols.inference import Task, TaskState, run_task
from edge_tts.protocols.realtime import Session, SessionRefused, SessionState

TASK = "a" * 32


def event(name: str, task_id: str | None = TASK, **header: Any) -> str:
    return json.dumps({"header": {"event": name, "task_id": task_id, **header}, "payload": {}})


def sent(protocol: Task | Session) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in protocol.data_to_send()]


def actions(protocol: Task) -> list[str]:
    return [m["header"]["action"] for m in sent(protocol)]


def duplex() -> Task:
    task = Task(TASK, run_task(TASK, "cosyvoice-v3-flash", {"voice": "longanyang"}))
    task.start()
    return task


# --- the inference task --------------------------------------------------------------------


def test_text_said_before_task_started_is_held_then_sent_in_order() -> None:
    task = duplex()
    task.send_text("One.")
    task.send_text("Two.")
    task.finish()
    assert actions(task) == ["run-task"]  # a continue-task now would fail the task
    assert task.receive(event("task-started")) == Started()
    out = sent(task)
    assert [m["header"]["action"] for m in out] == ["continue-task", "continue-task", "finish-task"]
    assert [m["payload"]["input"].get("text") for m in out] == ["One.", "Two.", None]
    assert {m["header"]["task_id"] for m in out} == {TASK}


def test_text_said_after_task_started_goes_at_once() -> None:
    task = duplex()
    sent(task)
    task.receive(event("task-started"))
    task.send_text("Now.")
    assert actions(task) == ["continue-task"]


def test_audio_and_the_end_of_a_task() -> None:
    task = duplex()
    task.receive(event("task-started"))
    assert task.receive(b"\x01\x02") == Audio(b"\x01\x02")
    assert task.receive(event("result-generated")) is None
    assert not task.reusable
    assert task.receive(event("task-finished")) == Finished()
    assert task.reusable and task.state is TaskState.FINISHED
    with pytest.raises(ProtocolMisuse):
        task.receive(b"late")


def test_a_failed_task_says_the_services_code_and_message_and_spends_the_connection() -> None:
    task = duplex()
    with pytest.raises(TaskFailed, match="DashScope task failed: InvalidParameter: bad voice"):
        task.receive(event("task-failed", error_code="InvalidParameter", error_message="bad voice"))
    assert task.state is TaskState.FAILED and not task.reusable


@pytest.mark.parametrize("frame", ["not json", "[]", '{"header": {}}', '{"payload": {}}', "null"])
def test_a_frame_that_is_no_protocol_event_fails_the_task(frame: str) -> None:
    task = duplex()
    with pytest.raises(SynthesisError, match="not a protocol event"):
        task.receive(frame)
    assert task.state is TaskState.FAILED


def test_another_tasks_event_does_not_end_this_one() -> None:
    task = duplex()
    task.receive(event("task-started"))
    assert task.receive(event("task-finished", task_id="b" * 32)) is None
    assert task.receive(event("task-failed", task_id="b" * 32)) is None
    assert task.state is TaskState.STARTED


def test_a_streaming_out_task_carries_its_text_and_ends_by_itself() -> None:
    task = Task(TASK, run_task(TASK, "sambert-zhichu-v1", {}, text="Hello."))
    task.start()
    task.finish()  # nothing to send: the service ends it
    out = sent(task)
    assert [m["header"]["streaming"] for m in out] == ["out"]
    assert out[0]["payload"]["input"] == {"text": "Hello."}
    with pytest.raises(ProtocolMisuse):
        task.send_text("more")


def test_misuse_is_refused_not_sent() -> None:
    task = Task(TASK, run_task(TASK, "cosyvoice-v3-flash", {}))
    with pytest.raises(ProtocolMisuse):
        task.send_text("before start")
    with pytest.raises(ProtocolMisuse):
        task.receive(event("task-started"))
    task.start()
    with pytest.raises(ProtocolMisuse):
        task.start()
    task.finish()
    task.finish()
    with pytest.raises(ProtocolMisuse):
        task.send_text("after finish")
    task.receive(event("task-started"))
    assert actions(task) == ["run-task", "finish-task"]  # one finish, however often asked


frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=16),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    ).map(json.dumps),
    st.builds(
        lambda name, tid: event(name, task_id=tid),
        st.sampled_from(["task-started", "task-finished", "task-failed", "result-generated"]),
        st.sampled_from([TASK, None, "b" * 32]),
    ),
)


@given(st.lists(frames, max_size=8))
def test_whatever_the_service_sends_a_task_answers_with_an_event_or_a_synthesis_error(
    received: list[str | bytes],
) -> None:
    task = duplex()
    for frame in received:
        if task.state in (TaskState.FINISHED, TaskState.FAILED):
            break
        try:
            got = task.receive(frame)
            assert got is None or isinstance(got, Audio | Started | Finished)
        except SynthesisError:
            assert task.state is TaskState.FAILED


# --- the Qwen session ------------------------------------------------------------------------

CONFIG = {"voice": "Cherry", "mode": "commit", "response_format": "pcm", "sample_rate": 24000}


def qwen(type_: str, **fields: Any) -> str:
    return json.dumps({"event_id": "e", "type": type_, **fields})


def ready(config: dict[str, Any] = CONFIG) -> Session:
    session = Session(config)
    assert session.receive(qwen("session.created")) is None
    assert session.receive(qwen("session.updated")) == Started()
    sent(session)
    return session


def test_the_session_is_configured_when_the_service_opens_it() -> None:
    session = Session(CONFIG)
    assert sent(session) == []
    session.receive(qwen("session.created"))
    update = sent(session)
    assert [m["type"] for m in update] == ["session.update"]
    assert update[0]["session"] == CONFIG
    assert session.state is SessionState.CONFIGURING
    assert session.receive(qwen("session.updated")) == Started()
    assert session.state is SessionState.READY


def test_a_service_that_opens_no_session_is_told_apart_from_a_refusal() -> None:
    session = Session(CONFIG)
    with pytest.raises(SynthesisError, match="opened no Qwen session") as raised:
        session.receive(qwen("response.done"))
    assert not isinstance(raised.value, SessionRefused)


def test_an_error_before_the_session_opens_says_the_service_refused_it() -> None:
    session = Session(CONFIG)
    error = {"type": "x", "code": "InvalidApiKey", "message": "bad key"}
    with pytest.raises(TaskFailed, match="refused the session: InvalidApiKey: bad key") as raised:
        session.receive(qwen("error", error=error))
    assert not isinstance(raised.value, SessionRefused)  # not the voice profile's fault


@pytest.mark.parametrize(("kind", "recoverable"), [("invalid_request_error", True), ("x", False)])
def test_a_refused_configuration_says_whether_it_was_ours(kind: str, recoverable: bool) -> None:
    session = Session(CONFIG)
    session.receive(qwen("session.created"))
    error = {"type": kind, "code": "InvalidParameter", "message": "no voice Ghost"}
    with pytest.raises(SessionRefused, match="InvalidParameter: no voice Ghost") as raised:
        session.receive(qwen("error", error=error))
    assert raised.value.recoverable is recoverable
    assert session.state is SessionState.FAILED


def test_commit_mode_commits_each_piece_and_counts_sentences() -> None:
    session = ready()
    session.send_text("One.")
    session.send_text("Two.")
    session.finish()
    assert [(m["type"], m.get("text")) for m in sent(session)] == [
        ("input_text_buffer.append", "One."),
        ("input_text_buffer.commit", None),
        ("input_text_buffer.append", "Two."),
        ("input_text_buffer.commit", None),
        ("session.finish", None),
    ]
    pcm = b"\x00\x01" * 5
    delta = qwen("response.audio.delta", delta=base64.b64encode(pcm).decode())
    assert session.receive(delta) == Audio(pcm)
    done = qwen("response.done", response={"status": "completed"})
    assert session.receive(done) == SentenceDone()
    assert session.receive(qwen("session.finished")) == Finished()
    assert session.state is SessionState.FINISHED


def test_server_commit_mode_leaves_the_cuts_to_the_service() -> None:
    session = ready({**CONFIG, "mode": "server_commit"})
    session.send_text("One. Two.")
    assert [m["type"] for m in sent(session)] == ["input_text_buffer.append"]
    assert session.receive(qwen("response.done", response={"status": "completed"})) is None


def test_a_response_that_did_not_complete_fails_the_session() -> None:
    session = ready()
    with pytest.raises(TaskFailed, match="ended a response as incomplete"):
        session.receive(qwen("response.done", response={"status": "incomplete"}))
    assert session.state is SessionState.FAILED


@pytest.mark.parametrize(
    ("kind", "said"), [("invalid_request_error", "refused the request"), ("server", "failed")]
)
def test_an_error_while_speaking_says_what_the_service_did(kind: str, said: str) -> None:
    session = ready()
    with pytest.raises(TaskFailed, match=f"DashScope {said}: Throttled: slow down"):
        session.receive(
            qwen("error", error={"type": kind, "code": "Throttled", "message": "slow down"})
        )


def test_audio_that_is_not_base64_is_an_error_not_noise() -> None:
    session = ready()
    with pytest.raises(SynthesisError, match="not base64"):
        session.receive(qwen("response.audio.delta", delta="**not base64**"))


def test_text_only_once_the_session_is_ready() -> None:
    session = Session(CONFIG)
    with pytest.raises(ProtocolMisuse):
        session.send_text("early")
    with pytest.raises(ProtocolMisuse):
        session.finish()
    session = ready()
    session.finish()
    session.finish()
    assert [m["type"] for m in sent(session)] == ["session.finish"]
    with pytest.raises(ProtocolMisuse):
        session.send_text("after finish")


qwen_frames = st.one_of(
    frames,
    st.builds(
        lambda kind, extra: json.dumps({"type": kind, **extra}),
        st.sampled_from(
            [
                "session.created",
                "session.updated",
                "response.audio.delta",
                "response.done",
                "session.finished",
                "error",
            ]
        ),
        st.dictionaries(
            st.sampled_from(["delta", "response", "error"]),
            st.none() | st.text(max_size=8) | st.dictionaries(st.text(max_size=6), st.text()),
        ),
    ),
)


@given(st.lists(qwen_frames, max_size=8))
def test_whatever_the_service_sends_a_session_answers_with_an_event_or_a_synthesis_error(
    received: list[str | bytes],
) -> None:
    session = Session(CONFIG)
    for frame in received:
        if session.state in (SessionState.FINISHED, SessionState.FAILED):
            break
        try:
            session.receive(frame)
        except SynthesisError:
            assert session.state is SessionState.FAILED


def test_every_task_message_carries_the_header_the_reference_documents() -> None:
    task = duplex()
    task.receive(event("task-started"))
    task.send_text("Hi.")
    task.finish()
    for m in sent(task):
        assert m["header"]["streaming"] == "duplex" and m["header"]["task_id"] == TASK
        assert set(m["header"]) == {"action", "task_id", "streaming"}


@pytest.mark.parametrize("error", ["a string", 5, None, ["x"]])
def test_an_error_event_of_any_shape_is_a_clear_failure_in_every_state(error: object) -> None:
    opening = Session(CONFIG)
    with pytest.raises(TaskFailed, match="unknown: no message"):
        opening.receive(qwen("error", error=error))
    configuring = Session(CONFIG)
    configuring.receive(qwen("session.created"))
    with pytest.raises(SessionRefused, match="unknown: no message"):
        configuring.receive(qwen("error", error=error))
    with pytest.raises(TaskFailed, match="unknown: no message"):
        ready().receive(qwen("error", error=error))


def test_a_delta_without_audio_is_no_audio() -> None:
    assert ready().receive(qwen("response.audio.delta")) == Audio(b"")


def test_audio_with_stray_characters_is_refused_not_cleaned_up() -> None:
    with pytest.raises(SynthesisError, match="not base64"):
        ready().receive(qwen("response.audio.delta", delta="AAAA*"))  # "AAAA" would decode


@pytest.mark.parametrize("response", [{"id": "r1"}, "done", None])
def test_a_response_done_that_says_no_status_is_a_completed_one(response: object) -> None:
    assert ready().receive(qwen("response.done", response=response)) == SentenceDone()


def test_only_task_started_releases_the_text_held_for_it() -> None:
    task = duplex()
    task.send_text("Held.")
    sent(task)
    assert task.receive(event("result-generated")) is None  # anything else: still waiting
    assert sent(task) == [] and task.state is TaskState.STARTING


def test_a_duplex_run_task_has_an_empty_input_as_documented() -> None:
    (run,) = sent(duplex())
    assert run["payload"]["input"] == {} and run["header"]["streaming"] == "duplex"
