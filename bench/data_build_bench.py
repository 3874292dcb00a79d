"""`bridgec data build --workers N` tokens/s against a single-process `tokenizers` loop, measured in the same run.

The corpus is synthetic: documents of ~1-3 KB stitched from the multilingual fixture
(tests/fixtures/text), written as JSON lines; the tokenizer is a byte-level BPE trained here
with `tokenizers` (vocabulary 4,000). The reference reads the same file line by line,
parses each line and encodes its text with `Tokenizer.encode` in one process: what a user
would write by hand. The data build runs the whole command path (reading, worker processes,
writing .bin/.idx/.json), so its figure includes the pool's start-up. Rounds alternate the two
sides; the ratio is the median over rounds, with its spread (min-max). Target: >= 1.8x with
2 workers on 2 cores.

    .venv/bin/python bench/data_build_bench.py [--megabytes 12] [--rounds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

sys.path.insert(0, str(ROOT))

from bridgec.runtime.data_build import build_indexed_dataset  # noqa: E402
from tests import tiny_tokenizers  # noqa: E402


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """JSON lines of 1-3 KB documents stitched from the fixture texts; returns the document count."""
    rng, texts = random.Random(seed), tiny_tokenizers.corpus_texts()
    written = documents = 0
    with path.open("w", encoding="utf-8") as stream:
        while written < megabytes * 1e6:
            parts, size = [], rng.randint(1000, 3000)
            while sum(map(len, parts)) < size:
                parts.append(rng.choice(texts))
            line = json.dumps({"text": " ".join(parts)}, ensure_ascii=False) + "\n"
            stream.write(line)
            written += len(line.encode("utf-8"))
            documents += 1
    return documents


def reference_loop(corpus: Path, tokenizer_dir: Path) -> tuple[float, int]:
    """Seconds and tokens of the single-process `tokenizers` loop (loading the tokenizer included)."""
    started = time.perf_counter()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    tokens = 0
    with corpus.open(encoding="utf-8") as stream:
        for line in stream:
            tokens += len(tokenizer.encode(json.loads(line)["text"], add_special_tokens=False).ids)
    return time.perf_counter() - started, tokens


def data_build(corpus: Path, tokenizer_dir: Path, out: Path, workers: int) -> tuple[float, int]:
    started = time.perf_counter()
    report = build_indexed_dataset(corpus, out / "ds", tokenizer=tokenizer_dir, workers=workers)
    return time.perf_counter() - started, report.tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=12.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        tokenizer_dir = tiny_tokenizers.huggingface_bpe(folder / "tokenizer", vocab_size=4000)
        documents = write_corpus(folder / "corpus.jsonl", args.megabytes)
        print(
            f"corpus: {documents:,} documents, {args.megabytes:g} MB; {os.cpu_count()} CPUs; "
            f"data build with {args.workers} workers; {args.rounds} rounds"
        )
        # Both sides are timed after the one-off imports (torch and megatron-core for the index writer).
        data_build(folder / "corpus.jsonl", tokenizer_dir, folder, 1)
        reference_rates, build_rates, ratios = [], [], []
        for round_ in range(args.rounds):
            ref_seconds, ref_tokens = reference_loop(folder / "corpus.jsonl", tokenizer_dir)
            build_seconds, build_tokens = data_build(folder / "corpus.jsonl", tokenizer_dir, folder, args.workers)
            if build_tokens != ref_tokens:
                raise SystemExit(f"the two sides tokenized different work: {build_tokens} != {ref_tokens} tokens")
            reference_rates.append(ref_tokens / ref_seconds)
            build_rates.append(build_tokens / build_seconds)
            ratios.append(ref_seconds / build_seconds)
            print(
                f"round {round_ + 1}: reference {ref_tokens / ref_seconds:12,.0f} tokens/s ({ref_seconds:.2f} s)   "
                f"data build {build_tokens / build_seconds:12,.0f} tokens/s ({build_seconds:.2f} s)   "
                f"x{ref_seconds / build_seconds:.2f}"
            )
        ratio = statistics.median(ratios)
        verdict = "meets" if ratio >= 1.8 else "misses"
        print(
            f"single-process tokenizers loop: {statistics.median(reference_rates):,.0f} tokens/s (median)\n"
            f"bridgec data build --workers {args.workers}: {statistics.median(build_rates):,.0f} tokens/s (median)\n"
            f"ratio x{ratio:.2f} (median; spread x{min(ratios):.2f}-x{max(ratios):.2f}); target >= 1.8x: {verdict} it"
        )


if __name__ == "__main__":
    main()
