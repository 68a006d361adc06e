"""Tiny random-init Hugging Face MoE models and a real-text corpus, for tests, examples and
studies of the monitor on CPU. Needs the ``hf`` extra (torch, transformers); nothing is
downloaded: the models are built from configs, the text is the Python standard library's own
source code (byte-level tokens), which is on every machine that runs Python, the English prose of
Python's own documentation (``pydoc_data``), or the licence texts every Debian system ships.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

__all__ = ["CORPORA", "FAMILIES", "corpus", "stdlib_corpus", "text_batches", "tiny_model"]

FAMILIES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "granitemoe")


def tiny_model(family: str, seed: int = 0):
    """A tiny random-init causal LM of ``family`` (2 layers, 8 experts, top-2, hidden 64, vocabulary
    512, aux-loss coefficient 0.02), built from its config: nothing is downloaded. ``family``:
    one of :data:`FAMILIES`."""
    import torch

    torch.manual_seed(seed)
    common = dict(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        output_router_logits=True,
        router_aux_loss_coef=0.02,
    )
    if family == "mixtral":
        from transformers import MixtralConfig, MixtralForCausalLM

        cfg = MixtralConfig(
            intermediate_size=128, num_local_experts=8, num_experts_per_tok=2, **common
        )
        return MixtralForCausalLM(cfg)
    if family == "qwen2_moe":
        from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

        cfg = Qwen2MoeConfig(
            intermediate_size=128,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=64,
            num_experts=8,
            num_experts_per_tok=2,
            decoder_sparse_step=1,
            **common,
        )
        return Qwen2MoeForCausalLM(cfg)
    if family == "olmoe":
        from transformers import OlmoeConfig, OlmoeForCausalLM

        cfg = OlmoeConfig(
            intermediate_size=128,
            num_experts=8,
            num_experts_per_tok=2,
            pad_token_id=1,
            eos_token_id=2,  # the default (50279) lies outside the tiny vocabulary
            **common,
        )
        return OlmoeForCausalLM(cfg)
    if family == "qwen3_moe":
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        cfg = Qwen3MoeConfig(
            intermediate_size=128,
            moe_intermediate_size=64,
            head_dim=16,
            num_experts=8,
            num_experts_per_tok=2,
            **common,
        )
        return Qwen3MoeForCausalLM(cfg)
    if family == "deepseek_v3":
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

        cfg = DeepseekV3Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            first_k_dense_replace=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            n_routed_experts=8,
            num_experts_per_tok=2,
            n_group=2,
            topk_group=1,
            n_shared_experts=1,
            kv_lora_rank=16,
            q_lora_rank=None,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            max_position_embeddings=64,
        )
        return DeepseekV3ForCausalLM(cfg)
    if family == "granitemoe":
        from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

        cfg = GraniteMoeConfig(
            intermediate_size=64, num_local_experts=8, num_experts_per_tok=2, **common
        )
        return GraniteMoeForCausalLM(cfg)
    raise ValueError(f"family: unknown {family!r}")


def stdlib_corpus(max_bytes: int = 8 << 20) -> np.ndarray:
    """Bytes (uint8) of the Python standard library's ``.py`` sources, files in sorted order, at
    most ``max_bytes``: real, heterogeneous text available offline."""
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "test" in path.parts:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)


def pydoc_corpus(max_bytes: int = 8 << 20) -> np.ndarray:
    """Bytes of the English prose of Python's documentation (the ``pydoc_data`` topics, about
    460 kB, in sorted topic order), at most ``max_bytes``."""
    from pydoc_data.topics import topics

    data = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
    return np.frombuffer(data[:max_bytes], dtype=np.uint8)


def licenses_corpus(max_bytes: int = 8 << 20) -> np.ndarray:
    """Bytes of the licence texts in ``/usr/share/common-licenses`` (English legal prose, about
    400 kB on Debian), files in sorted order, at most ``max_bytes``."""
    root = Path("/usr/share/common-licenses")
    files = sorted(p for p in root.glob("*") if p.is_file()) if root.is_dir() else []
    data = b"\n\n".join(p.read_bytes() for p in files)
    if not data:
        raise ValueError(f"corpus: no licence texts under {root}")
    return np.frombuffer(data[:max_bytes], dtype=np.uint8)


CORPORA = {"python": stdlib_corpus, "pydoc": pydoc_corpus, "licenses": licenses_corpus}


def corpus(name: str, max_bytes: int = 8 << 20) -> np.ndarray:
    """Bytes of the offline corpus ``name``: ``"python"`` (standard-library sources),
    ``"pydoc"`` (Python's documentation prose), ``"licenses"`` (Debian's licence texts)."""
    if name not in CORPORA:
        raise ValueError(f"corpus: one of {', '.join(CORPORA)}, got {name!r}")
    return CORPORA[name](max_bytes)


def text_batches(steps: int, batch: int, seq: int, *, seed: int = 0, corpus=None):
    """``steps`` batches of shape ``(batch, seq)`` (int64 tensors) of byte-level tokens of
    ``corpus`` (default :func:`stdlib_corpus`), each row a window at a random offset."""
    import torch

    data = stdlib_corpus() if corpus is None else np.asarray(corpus, dtype=np.uint8)
    if data.size <= seq:
        raise ValueError(f"corpus: need more than seq = {seq} bytes, got {data.size}")
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        start = rng.integers(0, data.size - seq, size=batch)
        x = data[start[:, None] + np.arange(seq)[None, :]].astype(np.int64)
        yield torch.from_numpy(x)
