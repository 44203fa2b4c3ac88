"""Text continuation on servers that can't continue a message: the repeated
start of a continuation is dropped, nothing else is."""
from __future__ import annotations

from l0.client.session import _Overlap


def feed(delivered, pieces, **kw):
    o = _Overlap(delivered, **kw)
    out = []
    for i, p in enumerate(pieces):
        got = o.feed(p, final=i == len(pieces) - 1)
        if got is not None:
            out.append(got)
    return "".join(out)


def test_a_restated_tail_is_dropped():
    delivered = "The robot picked up a brush and painted the sky"
    cont = [" painted", " the sky", " a deep", " blue, then", " stepped back", " to look at it", "."]
    assert feed(delivered, cont) == " a deep blue, then stepped back to look at it."


def test_no_overlap_passes_unchanged():
    delivered = "The robot picked up a brush"
    cont = [" and dipped", " it into", " the paint", " pot beside", " the easel", " with great", " care."]
    assert feed(delivered, cont) == "".join(cont)


def test_short_coincidences_are_kept():
    # " the" repeats by chance: below the 8-character minimum, not an overlap
    assert feed("He looked at the", [" the", "n smiled", "."]) == " then smiled."


def test_a_stream_shorter_than_the_window_is_decided_at_its_end():
    assert feed("one two three four", ["three four", " five"]) == " five"
