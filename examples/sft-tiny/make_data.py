"""Writes this example's inputs: chat.jsonl (small arithmetic chats) and tokenizer/ (a tiny byte-level BPE).

Run once from this folder; the outputs are committed, so the example needs no download:
    python make_data.py
The tokenizer is trained on the chats themselves (vocab 384) and carries a Qwen-style chat template
whose {% generation %} markers give the assistant turns to the loss mask.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
)


def chats(count: int) -> list[dict]:
    """Additions and counting, some with a system turn, some two user turns long: lengths vary, so packing pays."""
    rng = random.Random(7)
    records = []
    for _ in range(count):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        messages = [{"role": "system", "content": "Answer with the number."}] if rng.random() < 0.3 else []
        messages += [{"role": "user", "content": f"{a} + {b}?"}, {"role": "assistant", "content": str(a + b)}]
        if rng.random() < 0.5:
            n = rng.randint(2, 6)
            messages += [
                {"role": "user", "content": f"Count to {n}."},
                {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))},
            ]
        records.append({"messages": messages})
    return records


def main() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    records = chats(200)
    (HERE / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [m["content"] for r in records for m in r["messages"]] + ["system", "user", "assistant"]
    tokenizer.train_from_iterator(texts, trainer=trainer)
    folder = HERE / "tokenizer"
    folder.mkdir(exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "bos_token": None, "chat_template": TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
