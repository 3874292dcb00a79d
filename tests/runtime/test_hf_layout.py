"""The parameter table's Hugging Face rows: every parameter of a dense model has its tensors, each tensor belongs
to one parameter, and a tensor-parallel rank's slices (what the import reads) are its part of the whole
parameter that the export splits back into the same tensors."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import torch
from safetensors.torch import save_file

from bridgec.runtime.hf_layout import Shard, expected_shapes, hf_tensors, read_local
from bridgec.runtime.hf_read import SafetensorsFolder
from bridgec.runtime.models.gpt import GPTConfig, Parameter, chunk_parameters, parameters

BASE = GPTConfig(
    num_layers=2, hidden=16, heads=4, groups=2, head_dim=8, ffn=24, vocab=40, seq_length=8, layernorm=False,
    gated=True, bias=False, qk_norm=True, tied=False, learned_positions=False, qkv_bias=True,
)  # fmt: skip
VOCAB = 37
"""Three padded rows."""


@pytest.mark.parametrize("transformer_engine", [False, True])
def test_every_parameter_has_its_tensors_once(transformer_engine: bool) -> None:
    config = attrs.evolve(BASE, transformer_engine=transformer_engine)
    shapes, unmapped = expected_shapes(config, VOCAB)
    assert unmapped == []
    counted = sum(len(p.entry.hf.names) for p in parameters(config) if p.entry.hf is not None)
    assert counted == len(shapes)  # no two parameters claim the same tensor


def _split(parameter: Parameter, value: torch.Tensor, tensor: int, rank: int) -> torch.Tensor:
    """megatron-core's split of a full parameter (stride 2 for [gate; up])."""
    if parameter.split is None:
        return value
    pieces = value.chunk(tensor * parameter.stride, dim=parameter.split.axis)
    return torch.cat(pieces[rank::tensor], dim=parameter.split.axis)


def test_rank_slices_are_the_parameter_split_and_export_inverts_it(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    full = {p.name: torch.randn(p.shape, generator=generator) for p in parameters(BASE)}
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        full[name][VOCAB:] = 0  # megatron's padded rows
    tensors: dict[str, torch.Tensor] = {}
    for parameter in parameters(BASE):
        tensors.update(hf_tensors(parameter, full[parameter.name], BASE, vocab_size=VOCAB))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    folder = SafetensorsFolder(tmp_path)
    for rank in range(2):
        for parameter in chunk_parameters(BASE, layers=range(2), first=True, last=True, tensor=2):
            local = read_local(folder, parameter, BASE, vocab_size=VOCAB, shard=Shard(size=2, rank=rank))
            assert torch.equal(local, _split(parameter, full[parameter.name], 2, rank)), (parameter.name, rank)
