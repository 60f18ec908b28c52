"""The float training model (a ``transformers`` Llama) and its export to the integer model.

Only training uses this module; coding uses the exported integer tensors
(:mod:`medcodec.model.intnet`), never float inference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from .geometry import MAX_K, N_BINS, N_CAUSAL, N_PROMPT, PATCH_TOKENS
from .intnet import (
    ACT_SHIFT,
    ATT_SHIFT,
    OUT_SHIFT,
    PROMPT_SHIFT,
    REQUANT_SHIFT,
    ROPE_SHIFT,
    SILU_RANGE,
    SILU_STEP_SHIFT,
    ModelShape,
)

WEIGHT_LEVELS = 511  # weights are quantized to +-511 per output channel
RMS_EPS = 1e-5


def llama_config(shape: ModelShape) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=1,  # tokens enter as embeddings (visual prompt + causal symbols)
        hidden_size=shape.hidden,
        intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=PATCH_TOKENS,
        rms_norm_eps=RMS_EPS,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        attn_implementation="eager",
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


class FloatLocalModel(nn.Module):
    """Next-local-symbol model: visual prompt + causal neighbour symbols + k -> logits over N_BINS."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.llm = LlamaModel(llama_config(shape))
        self.prompt = nn.Linear(N_PROMPT, shape.hidden)
        self.emb_k = nn.Embedding(MAX_K + 1, shape.hidden)
        self.emb_causal = nn.Embedding(N_CAUSAL * (N_BINS + 1), shape.hidden)
        self.head = nn.Linear(shape.hidden, N_BINS)
        for emb in (self.emb_k, self.emb_causal):
            nn.init.normal_(emb.weight, std=0.1)
        self.register_buffer("_causal_offset", torch.arange(N_CAUSAL) * (N_BINS + 1), persistent=False)

    def forward(self, prompt: torch.Tensor, causal: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        x = self.prompt(prompt.float() / (1 << PROMPT_SHIFT)) + self.emb_k(k)[:, None, :]
        x = x + self.emb_causal(causal + self._causal_offset).sum(dim=2)
        h = self.llm(inputs_embeds=x).last_hidden_state
        return self.head(h)


def grouped_log_probs(logits: torch.Tensor, k: int) -> torch.Tensor:
    """log p of the 2**k local symbols: bins of N_BINS summed in groups (as the coder does)."""
    logp = torch.log_softmax(logits, dim=-1)
    return logp.unflatten(-1, (1 << k, 1 << (MAX_K - k))).logsumexp(dim=-1)


# --- export --------------------------------------------------------------------------------


def _quantize_linear(lin: nn.Linear, in_shift: int, out_shift: int, prefix: str, out: dict) -> None:
    w = lin.weight.detach().double()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / WEIGHT_LEVELS
    out[prefix + ".weight"] = torch.round(w / scale[:, None]).to(torch.int64)
    out[prefix + ".mult"] = torch.round(scale * 2.0 ** (REQUANT_SHIFT + out_shift - in_shift)).to(torch.int64)
    if lin.bias is not None:
        out[prefix + ".bias"] = torch.round(lin.bias.detach().double() * 2.0**out_shift).to(torch.int64)


def _gain(norm: nn.Module) -> torch.Tensor:
    return torch.round(norm.weight.detach().double() * 2.0**ACT_SHIFT).to(torch.int64)


def export_integer(model: FloatLocalModel) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Integer tensors + metadata of the exact inference model (see intnet for the rules)."""
    shape = model.shape
    t: dict[str, torch.Tensor] = {}
    a = 2.0**ACT_SHIFT
    t["emb_k"] = torch.round(model.emb_k.weight.detach().double() * a).to(torch.int64)
    t["emb_causal"] = torch.round(
        model.emb_causal.weight.detach().double().view(N_CAUSAL, N_BINS + 1, shape.hidden) * a
    ).to(torch.int64)
    _quantize_linear(model.prompt, PROMPT_SHIFT, ACT_SHIFT, "prompt", t)
    for i, layer in enumerate(model.llm.layers):
        p = f"layers.{i}."
        t[p + "in_norm"] = _gain(layer.input_layernorm)
        t[p + "post_norm"] = _gain(layer.post_attention_layernorm)
        att, mlp = layer.self_attn, layer.mlp
        for name, lin in (("q", att.q_proj), ("k", att.k_proj), ("v", att.v_proj), ("o", att.o_proj)):
            _quantize_linear(lin, ACT_SHIFT, ACT_SHIFT, p + name, t)
        for name, lin in (("gate", mlp.gate_proj), ("up", mlp.up_proj), ("down", mlp.down_proj)):
            _quantize_linear(lin, ACT_SHIFT, ACT_SHIFT, p + name, t)
    t["final_norm"] = _gain(model.llm.norm)
    _quantize_linear(model.head, ACT_SHIFT, OUT_SHIFT, "head", t)
    # Rotary tables exactly as the float model uses them, rounded once here.
    probe = torch.zeros(1, PATCH_TOKENS, shape.hidden)
    cos, sin = model.llm.rotary_emb(probe, torch.arange(PATCH_TOKENS)[None])
    t["rope.cos"] = torch.round(cos[0].double() * 2.0**ROPE_SHIFT).to(torch.int64)
    t["rope.sin"] = torch.round(sin[0].double() * 2.0**ROPE_SHIFT).to(torch.int64)
    # Lookup tables, stored with the weights so no machine's libm is ever consulted.
    t["lut.exp_att"] = _exp_table(ATT_SHIFT)
    t["lut.exp_out"] = _exp_table(OUT_SHIFT)
    x = torch.arange(-SILU_RANGE, SILU_RANGE + 1, dtype=torch.float64) / 2.0 ** (ACT_SHIFT - SILU_STEP_SHIFT)
    t["lut.silu"] = torch.round(torch.nn.functional.silu(x) * a).to(torch.int64)
    eps = max(1, round(RMS_EPS * 2.0 ** (2 * ACT_SHIFT)))
    att_mult = round(2.0 ** (REQUANT_SHIFT + ATT_SHIFT - 2 * ACT_SHIFT) / math.sqrt(shape.head_dim))
    meta = {
        "hidden": str(shape.hidden),
        "layers": str(shape.layers),
        "heads": str(shape.heads),
        "ffn": str(shape.ffn),
        "eps": str(eps),
        "att_mult": str(att_mult),
    }
    return {n: v.contiguous() for n, v in t.items()}, meta


def _exp_table(shift: int) -> torch.Tensor:
    """round(2**16 * exp(-j / 2**shift)) down to the first zero."""
    n = int(math.ceil(17 * math.log(2) * 2**shift)) + 1
    j = np.arange(n, dtype=np.float64)
    return torch.from_numpy(np.round(65536.0 * np.exp(-j / 2.0**shift)).astype(np.int64))
