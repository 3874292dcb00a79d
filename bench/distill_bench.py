"""The cost of a frozen teacher: step time and memory of the same student with and without distillation.

The student (4 layers, hidden 128) trains in the generated script twice per
round: once with bridgec's own loss, once compiled with a [distill] table whose
teacher, twice as wide and deep (a Llama-shaped Hugging Face folder made here
with transformers, random weights), runs forward only and adds runtime.distill's
vocabulary-parallel KL loss. Each round gives the ratio of the median step times
and of the peak memory (the process's RSS on the CPU); rounds alternate the two
runs, and the spread is over the rounds.

    .venv/bin/python bench/distill_bench.py
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path

from common import median
from runtime_bench import compile_spec, torchrun

STEPS = 20
WARMUP = 5
ROUNDS = 3
DISTILL = """
[distill]
temperature = 2.0

[distill.teacher]
num_layers = 8
hidden_size = 256
num_attention_heads = 8
ffn_hidden_size = 1024
vocab_size = 256
seq_length = 64
normalization = "rmsnorm"
activation = "swiglu"
position_embedding = "rope"
tie_embeddings = false
add_bias_linear = false

[distill.teacher.checkpoint]
format = "huggingface"
path = "teacher"
"""

SPEC = """
[run]
name = "bench"
[model]
num_layers = 4
hidden_size = 128
num_attention_heads = 4
vocab_size = 256
seq_length = 64
position_embedding = "rope"
[batch]
global_batch_size = 8
micro_batch_size = 2
[train]
iters = {steps}
log_interval = {steps}
[optimizer]
lr = 1e-3
{distill}
"""


def make_teacher(folder: Path) -> None:
    """The [distill.teacher] above as a Hugging Face folder (random weights: the cost does not depend on them)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=1024, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)


def measure(script: Path) -> tuple[float, int]:
    """The median step time after warm-up, and the largest RSS any step recorded."""
    shutil.rmtree(script.parent / "out", ignore_errors=True)
    torchrun(script, 1)
    records = [json.loads(line) for line in (script.parent / "out/bench/spec.metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    elapsed = [r["elapsed_s"] for r in train]
    steps = [later - earlier for earlier, later in zip(elapsed, elapsed[1:])]
    return median(steps[WARMUP:]), max(r["memory_bytes"]["rss"] for r in train)


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        plain = compile_spec(scratch / "plain", SPEC.format(steps=STEPS, distill=""))
        make_teacher(scratch / "kd" / "teacher")
        distilled = compile_spec(scratch / "kd", SPEC.format(steps=STEPS, distill=DISTILL))
        rounds = []
        for _ in range(ROUNDS):
            plain_time, plain_rss = measure(plain)
            kd_time, kd_rss = measure(distilled)
            rounds.append((plain_time, kd_time, kd_time / plain_time, plain_rss, kd_rss, kd_rss / plain_rss))
    print(
        f"\ndistillation cost (student 4 x 128, teacher 8 x 256, vocab 256, 8 x 64 tokens a step, fp32, CPU, {ROUNDS} rounds)"
    )
    for name, index, unit in (("step time, no teacher", 0, "ms"), ("step time, with teacher + KD", 1, "ms")):
        values = [r[index] * 1000 for r in rounds]
        print(f"{name:<40} {statistics.median(values):9.1f} {unit}   (rounds {min(values):.1f} to {max(values):.1f})")
    ratios = [r[2] for r in rounds]
    print(
        f"{'step time ratio (teacher / none)':<40} {statistics.median(ratios):9.2f} x    (rounds {min(ratios):.2f} to {max(ratios):.2f})"
    )
    for name, index in (("peak RSS, no teacher", 3), ("peak RSS, with teacher + KD", 4)):
        values = [r[index] / 2**20 for r in rounds]
        print(f"{name:<40} {statistics.median(values):9.1f} MiB  (rounds {min(values):.1f} to {max(values):.1f})")
    ratios = [r[5] for r in rounds]
    print(
        f"{'peak RSS ratio (teacher / none)':<40} {statistics.median(ratios):9.2f} x    (rounds {min(ratios):.2f} to {max(ratios):.2f})"
    )


if __name__ == "__main__":
    main()
