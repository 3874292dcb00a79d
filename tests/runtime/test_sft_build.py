"""bridgec data build --sft: ids and assistant masks equal transformers' apply_chat_template, loss modes, bad input.

Llama-3-style and Qwen-style chat templates (tests/fixtures/chat, with {% generation %} markers) on
multi-turn records, over a tiny BPE trained here with the templates' markers as special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgec.runtime.data_build import DataBuildError
from bridgec.runtime.sft_build import MASK_SUFFIX, SftSettings, build_sft_dataset
from tests import tiny_tokenizers

CHAT = Path(__file__).resolve().parents[1] / "fixtures" / "chat"
RECORDS = CHAT / "multi_turn.jsonl"
TEMPLATES = {
    "llama3": (
        "<|begin_of_text|>",
        "<|eot_id|>",
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    "qwen": (None, "<|im_end|>", ("<|im_start|>", "<|im_end|>")),
}


def _tokenizer(folder: Path, style: str) -> Path:
    bos, eos, special = TEMPLATES[style]
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "chat_template": (CHAT / f"{style}.jinja").read_text(encoding="utf-8"),
    }
    return tiny_tokenizers.huggingface_bpe(folder, special=special, config=config)


def _read(prefix: Path) -> tuple[list[list[int]], list[list[int]]]:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    tokens, masks = IndexedDataset(str(prefix)), IndexedDataset(f"{prefix}{MASK_SUFFIX}")
    return [tokens[i].tolist() for i in range(len(tokens))], [masks[i].tolist() for i in range(len(masks))]


@pytest.mark.parametrize("style", sorted(TEMPLATES))
def test_ids_and_assistant_masks_equal_transformers(tmp_path: Path, style: str) -> None:
    from transformers import AutoTokenizer

    folder = _tokenizer(tmp_path / "tok", style)
    report = build_sft_dataset(
        [RECORDS], tmp_path / "sft", tokenizer=folder, settings=SftSettings(loss_mode="assistant")
    )
    reference = AutoTokenizer.from_pretrained(str(folder))
    ids, masks = _read(tmp_path / "sft")
    conversations = [json.loads(line)["messages"] for line in RECORDS.read_text(encoding="utf-8").splitlines()]
    assert report.samples == len(conversations) == len(ids)
    for conversation, got_ids, got_mask in zip(conversations, ids, masks):
        out = reference.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        assert got_ids == list(out["input_ids"])
        assert got_mask == list(out["assistant_masks"])
        assert 0 < sum(got_mask) < len(got_mask)
    sidecar = json.loads((tmp_path / "sft.json").read_text())
    assert (sidecar["kind"], sidecar["loss_mode"], sidecar["samples"]) == ("sft", "assistant", 4)


def test_last_turn_and_full_and_completion_modes(tmp_path: Path) -> None:
    folder = _tokenizer(tmp_path / "tok", "qwen")
    build_sft_dataset([RECORDS], tmp_path / "all", tokenizer=folder, settings=SftSettings(loss_mode="assistant"))
    build_sft_dataset([RECORDS], tmp_path / "last", tokenizer=folder, settings=SftSettings(loss_mode="last_turn"))
    build_sft_dataset([RECORDS], tmp_path / "full", tokenizer=folder, settings=SftSettings(loss_mode="full"))
    _, every = _read(tmp_path / "all")
    _, last = _read(tmp_path / "last")
    _, full = _read(tmp_path / "full")
    for all_mask, last_mask, full_mask in zip(every, last, full):
        assert all(full_mask)
        assert 0 < sum(last_mask) <= sum(all_mask)
        # The last turn's tokens are the last run of ones in the assistant mask.
        ones = [i for i, m in enumerate(all_mask) if m]
        assert [i for i, m in enumerate(last_mask) if m] == ones[len(ones) - sum(last_mask) :]
    assert sum(last[0]) < sum(every[0])  # record 1 has two assistant turns
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    settings = SftSettings(loss_mode="completion", prompt_key="q", completion_key="a")
    report = build_sft_dataset([pairs], tmp_path / "pc", tokenizer=folder, settings=settings)
    ids, masks = _read(tmp_path / "pc")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt, completion = (tokenizer.encode(t, add_special_tokens=False).ids for t in ("2+2?", "4"))
    eod = tokenizer.token_to_id("<|im_end|>")
    assert ids == [prompt + completion + [eod]]
    assert masks == [[0] * len(prompt) + [1] * (len(completion) + 1)]
    assert report.loss_tokens == len(completion) + 1


def test_overlong_samples_are_truncated_dropped_or_refused(tmp_path: Path) -> None:
    folder = _tokenizer(tmp_path / "tok", "llama3")
    build_sft_dataset([RECORDS], tmp_path / "whole", tokenizer=folder, settings=SftSettings())
    ids, _ = _read(tmp_path / "whole")
    limit = sorted(map(len, ids))[-2]  # only the longest sample is longer
    longest = max(range(len(ids)), key=lambda i: len(ids[i])) + 1
    report = build_sft_dataset(
        [RECORDS], tmp_path / "cut", tokenizer=folder, settings=SftSettings(max_length=limit, overlong="drop")
    )
    assert (report.samples, report.dropped, report.truncated) == (3, 1, 0)
    report = build_sft_dataset(
        [RECORDS], tmp_path / "cut", tokenizer=folder, settings=SftSettings(max_length=limit, overlong="truncate")
    )
    assert (report.samples, report.dropped, report.truncated) == (4, 0, 1)
    assert max(map(len, _read(tmp_path / "cut")[0])) == limit
    with pytest.raises(
        DataBuildError, match=rf"multi_turn.jsonl:{longest}: \d+ tokens, longer than --max-length {limit}"
    ):
        build_sft_dataset([RECORDS], tmp_path / "x", tokenizer=folder, settings=SftSettings(max_length=limit))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"messages": [{"role": "wizard", "content": "hi"}]}',
            r"bad.jsonl:2: messages\[0\] has the unknown role 'wizard'",
        ),
        ('{"messages": [{"role": "user", "content": "only a question"}]}', r"bad.jsonl:2: the loss mask is all zeros"),
        ('{"messages": [{"role": "user"}]}', r"bad.jsonl:2: messages\[0\] needs a string 'content'"),
        ("{not json", r"bad.jsonl:2: not a JSON object"),
        ('{"prompt": "no completion"}', r"bad.jsonl:2: expected a string 'prompt' and a string 'completion'"),
    ],
)
def test_bad_records_name_their_line_and_nothing_is_written(tmp_path: Path, line: str, message: str) -> None:
    folder = _tokenizer(tmp_path / "tok", "qwen")
    good = RECORDS.read_text(encoding="utf-8").splitlines()[0]
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataBuildError, match=message):
        build_sft_dataset([tmp_path / "bad.jsonl"], tmp_path / "out" / "sft", tokenizer=folder, settings=SftSettings())
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_template_that_wraps_every_turn_is_refused(tmp_path: Path) -> None:
    folder = _tokenizer(tmp_path / "tok", "qwen")
    (tmp_path / "all.jinja").write_text(
        "{% generation %}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% endgeneration %}"
    )
    with pytest.raises(DataBuildError, match=r"multi_turn.jsonl:1: the loss mask covers every token although"):
        build_sft_dataset(
            [RECORDS], tmp_path / "x", tokenizer=folder, settings=SftSettings(template=tmp_path / "all.jinja")
        )
    (tmp_path / "broken.jinja").write_text("{% for m in messages %}")
    with pytest.raises(DataBuildError, match=r"broken.jinja: the chat template does not compile: line 1"):
        build_sft_dataset(
            [RECORDS], tmp_path / "x", tokenizer=folder, settings=SftSettings(template=tmp_path / "broken.jinja")
        )


def test_the_command_line_refuses_options_that_sft_would_ignore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bridgec.compiler.cli import main

    args = [
        "data",
        "build",
        "--sft",
        "--input",
        str(RECORDS),
        "--tokenizer",
        str(tmp_path),
        "--output",
        str(tmp_path / "x"),
    ]
    assert main([*args, "--workers", "2"]) == 2
    assert "--workers and --text-key apply to pretraining data only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_parquet_records_build_what_the_same_jsonl_records_build(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = _tokenizer(tmp_path / "tok", "qwen")
    conversations = [json.loads(line) for line in RECORDS.read_text(encoding="utf-8").splitlines()]
    pq.write_table(pa.Table.from_pylist(conversations), tmp_path / "chat.parquet")
    pairs = [{"prompt": "2 + 2?", "completion": "4"}, {"prompt": "Capital of Peru?", "completion": "Lima"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    pq.write_table(pa.Table.from_pylist(pairs), tmp_path / "pairs.parquet")
    for name, settings in (("chat", SftSettings()), ("pairs", SftSettings(loss_mode="completion"))):
        source = RECORDS if name == "chat" else tmp_path / "pairs.jsonl"
        build_sft_dataset([source], tmp_path / f"{name}_jsonl", tokenizer=folder, settings=settings)
        build_sft_dataset([tmp_path / f"{name}.parquet"], tmp_path / f"{name}_pq", tokenizer=folder, settings=settings)
        assert _read(tmp_path / f"{name}_pq") == _read(tmp_path / f"{name}_jsonl")

    bad = [*conversations[:2], {"messages": [{"role": "narrator", "content": "Once"}]}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataBuildError, match=r"bad.parquet: row 3: messages\[0\] has the unknown role 'narrator'"):
        build_sft_dataset([tmp_path / "bad.parquet"], tmp_path / "x", tokenizer=folder, settings=SftSettings())
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataBuildError, match=r"broken.parquet: not a Parquet file pyarrow can read"):
        build_sft_dataset([tmp_path / "broken.parquet"], tmp_path / "x", tokenizer=folder, settings=SftSettings())
