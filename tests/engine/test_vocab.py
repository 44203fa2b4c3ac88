import pytest

from l0.engine.vocab import classes_from_texts, expected_items


@pytest.mark.parametrize("text,n", [
    ("Write a JSON array of 25 records, each with fields id, name and active. Use ids 1 to 25.", 25),
    ("Give me a list of 100 baby names.", 100),
    ("List the planets of the solar system.", 0),
    ("What happened in 1969?", 0),          # years and sizes above 1000 are not item counts
    ("Explain SmolLM2 in 3 points", 3),     # digits glued to a word are not counts
    ("Use 2.5 cups", 0),
])
def test_expected_items(text, n):
    assert expected_items(text) == n


def test_classes():
    c = classes_from_texts([" Pluto", "6", " ", ".", "a", "<|im_end|>", " 12"], special_ids=[5])
    assert c.content == [True, False, False, False, False, False, False]
    assert c.blank == [False, False, True, False, False, True, False]
    assert c.number == [False, True, False, False, False, False, True]
