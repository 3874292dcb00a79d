"""Make the tiny Hugging Face Llama this example fine-tunes: ./model (config.json + model.safetensors).

    python make_model.py        # needs transformers (pip install transformers)

A 2-layer Llama 3.1-style model (grouped-query attention, llama3 RoPE scaling) over a 256-token byte
vocabulary, with random weights drawn from a fixed seed, saved in fp32 the way any Hugging Face model is
saved. Nothing is downloaded. Then: bridgec compile spec.toml -o run.py && bridgec launch run.py
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers


def main() -> None:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    folder = Path(__file__).resolve().parent / "model"
    model.save_pretrained(folder)
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
