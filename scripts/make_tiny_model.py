#!/usr/bin/env python3
"""Generates Switchyard's tiny default model (model/builtin/tiny/).

The model is a Llama-architecture network (hidden 256, 2 layers, 4 heads of 64, 2 KV heads,
FFN 512, context 2048) with a byte-level BPE tokenizer of 2048 tokens trained on text that
every CPython ships (``pydoc_data.topics``), so it can be rebuilt offline anywhere.

By default only the tokenizer and configs are written: they are small, committed, and
embedded in the binary (the simulated engine needs nothing else). ``--weights`` also writes
random weights from a fixed seed as ``model.safetensors`` (for vLLM / transformers) and the
same weights as ``tiny.gguf`` (for llama.cpp), so real engines load one identical model.

Usage:
    pip install tokenizers numpy            # plus safetensors gguf for --weights
    python3 scripts/make_tiny_model.py                      # rewrite model/builtin/tiny/
    python3 scripts/make_tiny_model.py --out DIR --weights  # a full model directory

The output is deterministic for a given Python version (the training text comes from the
interpreter's ``pydoc_data``) and ``tokenizers`` version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "model" / "builtin" / "tiny"

VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SEED = 20240601

HIDDEN = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
FFN = 512
CONTEXT = 2048
RMS_EPS = 1e-6
ROPE_THETA = 10000.0

# ChatML, written the way Hugging Face tokenizer configs carry it. Message content may be a
# string or a list of OpenAI-style content parts (only the text parts are rendered); a missing
# or null content renders as empty, so assistant messages with only tool calls do not fail.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] }}"
    "{%- elif message['content'] is iterable %}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def training_text() -> list[str]:
    """Text that ships with every CPython, in a fixed order."""
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return [topics[key] for key in sorted(topics)]


def train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    # GPT-2's pre-tokenizer regex: llama.cpp's "gpt-2" pre-tokenizer type is the same split.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(), trainer=trainer)
    return tokenizer


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def tokenizer_config(ids: dict[str, int]) -> dict:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(ids[tok]): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for tok in SPECIAL_TOKENS
        },
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": CONTEXT,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


def model_config(vocab_size: int, ids: dict[str, int]) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": None,
        # One id, as most Llama configs carry it; generation_config.json adds <|endoftext|>.
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": FFN,
        "max_position_embeddings": CONTEXT,
        "mlp_bias": False,
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": RMS_EPS,
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def generation_config(ids: dict[str, int]) -> dict:
    return {
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
    }


def random_weights(vocab_size: int) -> dict:
    """HF-named Llama weights, float32, normal(0, 0.02) from a fixed seed; norms are ones."""
    import numpy as np

    rng = np.random.default_rng(SEED)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).astype(np.float32)

    def ones(n):
        return np.ones((n,), dtype=np.float32)

    weights = {"model.embed_tokens.weight": normal(vocab_size, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        weights[p + "input_layernorm.weight"] = ones(HIDDEN)
        weights[p + "self_attn.q_proj.weight"] = normal(HEADS * HEAD_DIM, HIDDEN)
        weights[p + "self_attn.k_proj.weight"] = normal(KV_HEADS * HEAD_DIM, HIDDEN)
        weights[p + "self_attn.v_proj.weight"] = normal(KV_HEADS * HEAD_DIM, HIDDEN)
        weights[p + "self_attn.o_proj.weight"] = normal(HIDDEN, HEADS * HEAD_DIM)
        weights[p + "post_attention_layernorm.weight"] = ones(HIDDEN)
        weights[p + "mlp.gate_proj.weight"] = normal(FFN, HIDDEN)
        weights[p + "mlp.up_proj.weight"] = normal(FFN, HIDDEN)
        weights[p + "mlp.down_proj.weight"] = normal(HIDDEN, FFN)
    weights["model.norm.weight"] = ones(HIDDEN)
    weights["lm_head.weight"] = normal(vocab_size, HIDDEN)
    return weights


def permute_rope(w, n_head: int):
    """llama.cpp's converter reorders q/k rows from HF's rotate-half layout to interleaved pairs."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_safetensors(path: Path, weights: dict) -> None:
    from safetensors.numpy import save_file

    save_file(weights, str(path), metadata={"format": "pt"})


def write_gguf(path: Path, weights: dict, tokenizer_json: dict, ids: dict[str, int]) -> None:
    import gguf

    vocab = tokenizer_json["model"]["vocab"]
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    for added in tokenizer_json.get("added_tokens", []):
        if added["id"] >= len(tokens):
            tokens.extend([""] * (added["id"] + 1 - len(tokens)))
        tokens[added["id"]] = added["content"]
    special = set(SPECIAL_TOKENS)
    token_types = [
        gguf.TokenType.CONTROL if tok in special else gguf.TokenType.NORMAL for tok in tokens
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("switchyard-tiny")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(len(tokens))

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(ids["<|im_end|>"])
    writer.add_pad_token_id(ids["<|endoftext|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer_names = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for name, tensor in weights.items():
        if name in names:
            out = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            out = f"blk.{layer}.{layer_names[rest]}"
        if name.endswith("q_proj.weight"):
            tensor = permute_rope(tensor, HEADS)
        elif name.endswith("k_proj.weight"):
            tensor = permute_rope(tensor, KV_HEADS)
        writer.add_tensor(out, tensor)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument(
        "--weights",
        action="store_true",
        help="also write random weights (model.safetensors and tiny.gguf; not committed)",
    )
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = train_tokenizer()
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)

    tokenizer.save(str(out / "tokenizer.json"), pretty=False)
    write_json(out / "tokenizer_config.json", tokenizer_config(ids))
    write_json(out / "config.json", model_config(vocab_size, ids))
    write_json(out / "generation_config.json", generation_config(ids))

    if args.weights:
        weights = random_weights(vocab_size)
        write_safetensors(out / "model.safetensors", weights)
        tokenizer_json = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
        write_gguf(out / "tiny.gguf", weights, tokenizer_json, ids)

    params = HIDDEN * vocab_size * 2 + LAYERS * (
        2 * HIDDEN * HEADS * HEAD_DIM + 2 * HIDDEN * KV_HEADS * HEAD_DIM + 3 * HIDDEN * FFN + 2 * HIDDEN
    ) + HIDDEN
    print(f"wrote {out}: vocab {vocab_size}, special ids {ids}, {params} parameters", file=sys.stderr)
    for name in sorted(os.listdir(out)):
        print(f"  {name}: {(out / name).stat().st_size} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
