"""The Triton models' text path (an LLM that streams text only, like Triton's
vLLM backend): text chunks become token ids with the model's tokenizer, and a
stop cuts the text at the token where the loop became certain. Driven
without Triton (the tensor glue is exercised by test_triton_e2e.py)."""
import pytest

from l0.engine.config import ServerConfig
from l0.engine.triton.guard import StreamGuard, parse_options
from l0.engine.triton.model import StepModel, _Text

pytestmark = pytest.mark.vllm  # needs the SmolLM2 tokenizer (make model)


@pytest.fixture(scope="module")
def text():
    from l0.engine.models import prepare_smollm2
    return _Text(str(prepare_smollm2()))


def _model(text):
    m = StepModel.__new__(StepModel)  # no Triton: only the pure parts
    m.text = text
    return m


def test_text_chunks_are_tokenized_and_a_stop_cuts_the_text(text):
    m = _model(text)
    guard = StreamGuard(parse_options(None, ServerConfig(action="stop")), 512, backend="reference")
    np = pytest.importorskip("numpy")
    intro = "Here are the planets of the solar system in order from the sun:"
    chunks = [intro] + [" Pluto is very far away."] * 80
    passed, stopped_at = "", None
    for i, chunk in enumerate(chunks):
        ids, t = m._chunk(None, np.array([chunk.encode()], dtype=object))
        assert ids == text.ids(chunk) and t == chunk
        n, verdict = guard.feed(ids)
        passed += chunk if n == len(ids) else text.cut(chunk, ids, n)
        if verdict is not None:
            stopped_at = (i, verdict)
            break
    assert stopped_at is not None and stopped_at[1].kind == "loop"
    i, verdict = stopped_at
    assert verdict.period == len(text.ids(" Pluto is very far away."))
    # Everything before the stopping chunk passed whole; that chunk up to the trigger token.
    assert passed.startswith("".join(chunks[:i])) and len(passed) <= len("".join(chunks[:i + 1]))
    assert guard.feed(text.ids(" Pluto")) == (0, None)


def test_text_without_a_tokenizer_is_a_clear_error():
    from l0.engine.config import OptionError
    np = pytest.importorskip("numpy")
    m = _model(None)
    with pytest.raises(OptionError, match="set the model's tokenizer parameter"):
        m._chunk(None, np.array([b"hello"], dtype=object))
    assert m._chunk(np.array([[3, 4]], dtype=np.int32), None) == ([3, 4], None)  # any integer tensor, read flat
