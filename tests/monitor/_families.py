"""Every MoE family of the installed transformers, built tiny from its config (nothing is
downloaded), and what each one actually dispatched (the truth the family test checks the
monitor's counts against).

A family is a ``transformers/models/<family>`` folder whose configuration mentions experts. The
tiny config shrinks the default config by name (hidden 64, 2 layers, 4 heads, 8 experts, top-2,
vocabulary 512; per-layer lists cut to one layer of each kind); ``EXTRA`` holds what a family
needs beyond that. The model is the family's text-only causal LM (or its text model).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re

import numpy as np
import torch
import transformers
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

MODELS = os.path.join(os.path.dirname(transformers.__file__), "models")

# families that are not routed MoE language models, and why
SKIP = {
    "vitpose_backbone": "not a router: ViTPose++ picks its expert head by the dataset index the "
    "caller passes, nothing is learned or routed",
    "nemotron3_5_transcribe": "speech model whose text decoder is NemotronH: tested as nemotron_h",
}

SIZE = {
    "vocab_size": 512,
    "hidden_size": 64,
    "d_model": 64,
    "n_embd": 64,
    "intermediate_size": 96,
    "ffn_dim": 96,
    "d_ff": 96,
    "encoder_ffn_dim": 96,
    "decoder_ffn_dim": 96,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "ffn_hidden_size": 96,
    "expert_ffn_hidden_size": 32,
    "moe_hidden_size": 32,
    "shared_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32,
    "shared_experts_intermediate_size": 32,
    "dense_intermediate_size": 96,
    "intermediate_size_mlp": 96,
    "num_hidden_layers": 2,
    "n_layers": 2,
    "num_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_decoder_layers": 2,
    "num_attention_heads": 4,
    "n_heads": 4,
    "num_heads": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "num_key_value_heads": 4,
    "head_dim": 16,
    "kv_channels": 16,
    "d_kv": 16,
    "num_experts": 8,
    "num_local_experts": 8,
    "n_routed_experts": 8,
    "moe_num_experts": 8,
    "num_experts_per_tok": 2,
    "moe_topk": 2,
    "moe_top_k": 2,
    "moe_k": 2,
    "top_k_experts": 2,
    "num_experts_per_token": 2,
    "zero_expert_num": 2,
    "max_position_embeddings": 128,
    "max_seq_len": 128,
    "kv_lora_rank": 16,
    "q_lora_rank": 32,
    "qk_rope_head_dim": 16,
    "qk_nope_head_dim": 8,
    "v_head_dim": 16,
    "index_head_dim": 16,
    "index_n_heads": 2,
    "index_topk": 8,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_head_dim": 16,
    "linear_num_heads": 4,
    "mamba_n_heads": 4,
    "mamba_d_head": 16,
    "mamba_d_state": 16,
    "mamba_num_heads": 4,
    "mamba_head_dim": 16,
    "ssm_state_size": 16,
    "mamba_chunk_size": 16,
    "chunk_size": 16,
    "mamba_dt_rank": 8,
    "swa_num_attention_heads": 4,
    "swa_num_key_value_heads": 4,
    "swa_head_dim": 16,
    "sliding_window": 16,
    "sliding_window_size": 16,
    "first_k_dense_replace": 0,
    "decoder_sparse_step": 1,
    "encoder_sparse_step": 1,
    "num_sparse_encoder_layers": 2,
    "num_sparse_decoder_layers": 2,
    "n_group": 2,
    "topk_group": 1,
    "num_expert_group": 2,
    "expert_capacity": 16,
}
# keys set even where the default is None (None would disable the MoE or break the model)
SET_NONE = {
    "sliding_window",
    "head_dim",
    "num_experts_per_tok",
    "moe_topk",
    "moe_top_k",
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "moe_num_experts",
    "moe_intermediate_size",
    "top_k_experts",
}
EXTRA = {
    "zaya": {"num_experts_per_tok": 1},  # ZAYA supports top-1 only
    "nllb-moe": {"encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0},  # deterministic layers
    "dots1": {"n_shared_experts": 1},
    "mimo_v2_flash": {"num_key_value_heads": 2},  # its SWA layers double the kv heads
    "mistral4": {"head_dim": 24},  # qk_nope + qk_rope
    "jamba": {
        "expert_layer_period": 1,
        "expert_layer_offset": 0,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "use_mamba_kernels": False,
    },
    "glm4v_moe_text": {
        "rope_parameters": {
            "rope_theta": 10000.0,
            "partial_rotary_factor": 0.5,
            "rope_type": "default",
            "mrope_section": [2, 1, 1],
        }
    },
    "ernie4_5_vl_moe_text": {
        "rope_parameters": {
            "rope_theta": 500000.0,
            "rope_type": "default",
            "mrope_section": [3, 3, 2],
        }
    },
    "glm5_next_text": {"index_topk": 16},
    "deepseek_ocr2_text": {"mlp_layer_types": ["sparse", "sparse"]},
    "step3p5": {"num_sliding_attention_heads": 4},
    "doge": {"is_moe": True, "num_experts": 16, "num_experts_per_tok": 2},  # 16 = 4 x 4 keys
    "lfm2_moe": {"layer_types": ["conv", "full_attention"], "num_dense_layers": 0},
    "dbrx": {
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {
            "ffn_hidden_size": 32,
            "moe_num_experts": 8,
            "moe_top_k": 2,
            "hidden_size": 64,
        },
    },
    "granitemoehybrid": {"layer_types": ["linear_attention", "attention"]},
    "qwen4_exp_text": {
        "indexer_n_heads": 2,
        "indexer_kv_heads": 1,
        "indexer_head_dim": 16,
        "indexer_budget": 8,
        "indexer_compress_ratio": 4,
    },
}


def moe_families() -> dict[str, list[str]]:
    """``{family folder: its model types}`` of the installed transformers whose configuration
    mentions experts."""
    out = {}
    for d in sorted(os.listdir(MODELS)):
        p = os.path.join(MODELS, d)
        if not os.path.isdir(p):
            continue
        for f in os.listdir(p):
            if f.startswith("configuration_") and f.endswith(".py"):
                with open(os.path.join(p, f), encoding="utf-8") as fh:
                    text = fh.read()
                if re.search(r"num_experts|n_routed_experts|num_local_experts|moe_num", text):
                    out[d] = [
                        k for k, v in CONFIG_MAPPING.items() if v.__module__.split(".")[2] == d
                    ]
    return out


def tiny_config(model_type: str):
    cls = CONFIG_MAPPING[model_type]
    d = cls().to_dict()
    kw = {}
    for k, v in d.items():
        if k in SIZE and (v is None or isinstance(v, int)) and not isinstance(v, bool):
            if (v is None and k not in SET_NONE) or v == 0:
                continue  # None: an option left off; 0: a dimension that must stay 0 (NoPE)
            kw[k] = SIZE[k]
        if k.endswith("token_id") and isinstance(v, int) and v >= 512:
            kw[k] = 3
        if k.endswith("token_id") and isinstance(v, list):
            kw[k] = [x if x < 512 else 3 for x in v]
    n_layers = d.get("num_hidden_layers")
    if isinstance(n_layers, int) and n_layers > 2:
        # per-layer lists (layer types, MLP types): one layer of each combination
        lists = {k: v for k, v in d.items() if isinstance(v, list) and len(v) == n_layers}
        # layer-index lists (MoE layer ids, KV source layers): the identity on the kept layers
        ident = [k for k, v in lists.items() if v == list(range(n_layers))]
        lists = {k: v for k, v in lists.items() if k not in ident}
        if lists:
            seen, idx = set(), []
            for i in range(n_layers):
                key = tuple(str(v[i]) for v in lists.values())
                if key not in seen:
                    seen.add(key)
                    idx.append(i)
            idx = idx if len(idx) >= 2 else idx + idx
            kw["num_hidden_layers"] = len(idx)
            kw.update({k: [v[i] for i in idx] for k, v in lists.items()})
            kw.update({k: list(range(len(idx))) for k in ident})
    if isinstance(d.get("mamba_expand"), int) and d.get("mamba_n_heads"):
        kw["mamba_d_head"] = d["mamba_expand"] * 64 // kw.get("mamba_n_heads", d["mamba_n_heads"])
    rp = d.get("rope_parameters")
    if isinstance(rp, dict) and isinstance(rp.get("mrope_section"), list):
        ms = rp["mrope_section"]
        orig = d.get("qk_rope_head_dim") or d.get("head_dim")
        new = kw.get("qk_rope_head_dim", kw.get("head_dim", 16))
        target = sum(ms) * new // orig
        q = target // 4
        kw["rope_parameters"] = dict(rp, mrope_section=[target - 2 * q, q, q])
    if isinstance(d.get("mlp_only_layers"), list):
        kw["mlp_only_layers"] = []
    if "enable_moe_block" in d:
        kw["enable_moe_block"] = True
    if isinstance(d.get("n_groups"), int):
        kw["n_groups"] = 1
    kw.update(EXTRA.get(d.get("model_type"), {}))
    return cls(**kw)


def _classes(family: str):
    from transformers import PreTrainedModel

    out = []
    for f in sorted(os.listdir(os.path.join(MODELS, family))):
        if f.startswith("modeling_") and f.endswith(".py"):
            mod = importlib.import_module(f"transformers.models.{family}.{f[:-3]}")
            out += [
                c
                for _, c in inspect.getmembers(mod, inspect.isclass)
                if issubclass(c, PreTrainedModel) and c.__module__ == mod.__name__
            ]
    return out


def choose(family: str, model_types: list[str]):
    """``(model type, model class)``: the family's text-only causal LM, else its text model."""
    classes = _classes(family)
    order = sorted(
        model_types,
        key=lambda m: (not m.endswith("_text"), "vision" in m or "audio" in m, len(m)),
    )
    for mt in order:
        cands = [c for c in classes if getattr(c, "config_class", None) is CONFIG_MAPPING[mt]]
        for suffix in ("ForCausalLM", "TextModel", "Model"):
            for c in cands:
                if c.__name__.endswith(suffix):
                    return mt, c
    for mt in order:
        name = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(
            mt
        ) or modeling_auto.MODEL_MAPPING_NAMES.get(mt)
        if name:
            return mt, getattr(transformers, name)
    raise LookupError(f"{family}: no model class")


def build(family: str, seed: int = 0):
    """``(model, config)`` of ``family``, random init, training mode."""
    mt, cls = choose(family, moe_families()[family])
    cfg = tiny_config(mt)
    torch.manual_seed(seed)
    return cls(cfg).train(), cfg


def forward(model, cfg, x):
    kw = {"decoder_input_ids": x} if getattr(cfg, "is_encoder_decoder", False) else {}
    return model(input_ids=x, **kw)


# --------------------------------------------------------------------------------------------
# what the model dispatched, per router (independent of the monitor)


class Dispatched:
    """Hooks that record, per router label, how many tokens each expert was handed, and how many
    assignments went to the skip slot (index N) or -1."""

    def __init__(self, model, routes: dict):
        self.counts = {label: np.zeros(r.n, np.int64) for label, r in routes.items()}
        self.skipped = dict.fromkeys(routes, 0)
        self.how = {}
        self._handles = []
        parents = {id(c): m for m in model.modules() for c in m.children()}
        for label, r in routes.items():
            parent = parents.get(id(r.module))
            self.how[label] = self._attach(label, r, parent)

    def _add(self, label, idx):
        idx = idx.detach().reshape(-1).cpu().numpy()
        n = self.counts[label].size
        ok = (idx >= 0) & (idx < n)
        self.counts[label] += np.bincount(idx[ok], minlength=n)
        self.skipped[label] += int((~ok).sum())

    def _hook(self, module, fn, pre=True):
        if pre:
            h = module.register_forward_pre_hook(fn, with_kwargs=True)
        else:
            h = module.register_forward_hook(fn)
        self._handles.append(h)

    def _attach(self, label, route, parent) -> str:
        mod = route.module
        name = type(mod).__name__
        if route.selection == "doge":  # the expert embeddings looked up

            def emb(m, args, kwargs, label=label):
                if m.training:
                    self._add(label, args[0])

            self._hook(mod.down_embed, emb)
            return "indices looked up in the expert embeddings (down_embed)"
        if name.startswith("SwitchTransformers"):
            for key, expert in parent.experts.items():
                e = int(key.split("_")[-1])

                def rows(m, args, kwargs, label=label, e=e):
                    if m.training:
                        self.counts[label][e] += args[0].shape[0]

                self._hook(expert, rows)
            return "rows each expert module received"
        if name.startswith("Nllb"):

            def ref(m, args, out, label=label, router=mod):
                if not m.training:
                    return
                c, dropped = _nllb_reference(router, out[2])
                self.counts[label] += c
                self.skipped[label] += dropped

            self._hook(mod, ref, pre=False)
            return (
                "fairseq top-2 routing with capacity re-implemented from the logits "
                "(transformers' NllbMoeExperts one-hots the one-hot mask: only experts 0 and 1 "
                "run, a transformers bug)"
            )
        if name.startswith("JetMoe"):
            # the MoE MLP and the mixture of attention heads both hand `input_linear` the
            # number of rows of each expert
            def sizes(m, args, kwargs, label=label):
                if m.training:
                    self.counts[label] += np.asarray(args[1], dtype=np.int64)

            self._hook(parent.input_linear, sizes)
            return "expert_size handed to the parallel experts"
        if name.startswith("Llama4"):

            def scores(m, args, out, label=label):
                if m.training:
                    self.counts[label] += (out[0] > 0).sum(0).cpu().numpy().astype(np.int64)

            self._hook(mod, scores, pre=False)
            return "nonzero gate scores (every expert computes every token, times its score)"
        if name.startswith("Dbrx"):
            mlp = parent.experts.mlp

            def glu(m, args, kwargs, label=label):
                if not m.training:
                    return
                w1 = args[1]
                e = w1.storage_offset() // w1.numel()
                self.counts[label][e] += args[0].shape[0]

            self._hook(mlp, glu)
            return "rows each expert's weights were applied to"
        experts = parent._modules.get("experts") if parent is not None else None
        if experts is None:
            raise LookupError(f"{label}: no experts module next to the router")

        def fused(m, args, kwargs, label=label):
            if m.training:
                idx = args[1] if len(args) > 1 else kwargs["top_k_index"]
                self._add(label, idx)

        self._hook(experts, fused)
        return "top_k_index handed to the experts module"

    def remove(self):
        for h in self._handles:
            h.remove()


def _nllb_reference(router, logits):
    """Top-2 routing of fairseq / NLLB-MoE (second_expert_policy 'all', no padding, no batch
    prioritised routing, training capacity): counts per expert and dropped assignments."""
    probs = torch.softmax(logits.detach().float(), dim=-1).reshape(-1, logits.shape[-1])
    n_tok, n = probs.shape
    first = probs.argmax(-1)
    masked = (
        logits.detach()
        .reshape(-1, n)
        .masked_fill(torch.nn.functional.one_hot(first, n).bool(), float("-inf"))
    )
    second = masked.argmax(-1)
    cap = router.expert_capacity
    counts = np.zeros(n, np.int64)
    dropped = 0
    # an expert's second choices queue behind all its first choices, kept or not
    queued = np.zeros(n, np.int64)
    for choice in (first, second):
        for t in range(n_tok):
            e = int(choice[t])
            if queued[e] < cap:
                counts[e] += 1
            else:
                dropped += 1
            queued[e] += 1
    return counts, dropped
