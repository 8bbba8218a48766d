"""Sentence splitting by the service's character count, and the streaming resampler."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from edge_tts.resample import Resampler, resample
from edge_tts.text import SentenceStream, split_sentences, weight


def test_sentences_keep_their_spaces_and_full_width_marks_need_none() -> None:
    assert split_sentences("Hello there. How are you?  Fine!") == [
        "Hello there. ",
        "How are you?  ",
        "Fine!",
    ]
    assert split_sentences("你好。今天天气很好！是的") == ["你好。", "今天天气很好！", "是的"]
    assert split_sentences("v1.2 is out. Yes") == ["v1.2 is out. ", "Yes"]  # no space: no end
    assert split_sentences("\nLeading break. \n\nTrailing") == ["\nLeading break. \n\n", "Trailing"]


def test_weight_counts_cjk_ideographs_twice() -> None:
    assert weight("中A文123") == 8 and weight("中文。") == 5 and weight("") == 0


@given(st.text(alphabet="ab .,!?中。\n", max_size=60), st.integers(min_value=2, max_value=8))
def test_pieces_join_back_and_stay_within_the_limit(text: str, limit: int) -> None:
    pieces = split_sentences(text, limit)
    assert "".join(pieces) == text
    assert all(piece.strip() or len(pieces) == 1 for piece in pieces)  # none blank
    assert all(weight(piece.strip()) <= limit for piece in pieces)


@given(
    st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=12),
    st.sampled_from([(24000, 22050), (22050, 24000), (48000, 8000), (16000, 48000)]),
)
def test_a_stream_resamples_to_the_same_bytes_however_it_is_cut(
    cuts: list[int], rates: tuple[int, int]
) -> None:
    pcm = (np.sin(np.arange(1000) / 5) * 9000).astype("<i2").tobytes()
    stream, out, at = Resampler(*rates), b"", 0
    for cut in cuts:
        out += stream.feed(pcm[at : at + cut])
        at += cut
    out += stream.feed(pcm[at:]) + stream.flush()
    assert out == resample(pcm, *rates)
    assert abs(len(out) // 2 - 1000 * rates[1] / rates[0]) <= 0.5  # the duration, to a sample


def test_streamed_text_comes_out_sentence_by_sentence_as_each_completes() -> None:
    stream = SentenceStream()
    said = [stream.feed(c) for c in ["Hello", " world", ".", " How are", " you? I", " am."]]
    assert said == [[], [], [], ["Hello world. "], ["How are you? "], []]
    assert stream.close() == ["I am."]  # the end of the text ends its last sentence
    assert stream.close() == []
    cjk = SentenceStream()
    assert cjk.feed("你好。今天") == ["你好。"]  # a full-width end needs no space


@given(
    st.lists(st.text(alphabet="ab .!?中。\n", max_size=12), max_size=12),
    st.integers(min_value=3, max_value=20),
)
def test_streamed_pieces_join_back_to_the_text(chunks: list[str], limit: int) -> None:
    stream = SentenceStream(limit)
    out = [piece for chunk in chunks for piece in stream.feed(chunk)] + stream.close()
    text, joined = "".join(chunks), "".join(out)
    assert text.startswith(joined) and not text[len(joined) :].strip()  # only blanks left out
    assert all(piece.strip() for piece in out)
