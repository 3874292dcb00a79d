"""Make the tiny Hugging Face Llama this example fine-tunes: ./model (config.json + model.safetensors).

    python make_model.py        # needs transformers (pip install transformers)

A 2-layer Llama-style model (grouped-query attention, RoPE, SwiGLU) over this example's 384-token
tokenizer (make_data.py), with random weights drawn from a fixed seed and saved in fp32 the way any
Hugging Face model is saved, so the example runs the whole fine-tuning path (Hugging Face weights in,
`bridgec convert megatron-to-hf` out) without a download. A real fine-tune points [init.checkpoint] at
a pretrained folder instead.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers


def main(folder: Path = Path(__file__).resolve().parent / "model") -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=384,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
