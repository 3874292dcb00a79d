"""Megatron-LM and Megatron Bridge names get the bridgec key that does the same, or "not supported yet"."""

from __future__ import annotations

from pathlib import Path

from bridgec.compiler import foreign_keys
from bridgec.compiler.foreign_keys import KEYS, UNSUPPORTED, VALUES, Here
from bridgec.compiler.load import _field_types, _tables
from bridgec.compiler.spec import Spec
from tests.compiler.conftest import messages, spec_toml

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_YET = "which bridgec does not support yet (see README.md#not-supported-yet)"


def test_a_megatron_key_names_the_bridgec_key_instead_of_a_misleading_did_you_mean() -> None:
    text = spec_toml(
        train={"train_iters": 10},
        model={"recompute_num_layers": 1},
        optimizer={"use_distributed_optimizer": True},
        checkpoint={"pretrained_checkpoint": "base"},
    )
    assert messages(text) == [
        "spec.toml:9: unknown key 'recompute_num_layers' in [model]; hint: recompute_num_layers asks for activation "
        f"recomputation, {NOT_YET}",
        "spec.toml:15: unknown key 'train_iters' in [train]; hint: train_iters is [train] iters here",
        "spec.toml:18: unknown key 'use_distributed_optimizer' in [optimizer]; hint: use_distributed_optimizer is "
        "[parallel] distributed_optimizer here",
        "spec.toml:20: unknown key 'pretrained_checkpoint' in [checkpoint]; hint: pretrained_checkpoint is "
        '[init.checkpoint] format = "megatron" and path here (optimizer_state = true continues its optimizer and '
        "schedule)",
    ]


def test_no_load_optim_names_optimizer_state() -> None:
    assert messages(spec_toml(checkpoint={"no_load_optim": True})) == [
        "spec.toml:17: unknown key 'no_load_optim' in [checkpoint]; hint: no_load_optim is [init.checkpoint] "
        'optimizer_state = false here (the default, with format = "megatron")',
    ]


def test_megatron_values_tables_and_dashed_flags() -> None:
    text = spec_toml(
        data={"kind": "packed"}, optimizer={"name": "adamw"}, logger={"log_interval": 5}, train={"train-iters": 10}
    )
    assert messages(text) == [
        "spec.toml:14: unknown key 'train-iters' in [train]; hint: train-iters is [train] iters here",
        "spec.toml:17: $.optimizer.name = \"adamw\" must be one of 'adam', 'sgd'; hint: name = \"adamw\" is "
        '[optimizer] name = "adam" here (adam is AdamW here: decoupled weight decay)',
        "spec.toml:19: $.data.kind = \"packed\" must be one of 'mock', 'indexed', 'sft'; hint: kind = \"packed\" "
        'is [data] kind = "sft" and packing = true here (samples packed first fit decreasing)',
        "spec.toml:20: unknown table [logger]; hint: logger is [logging] tensorboard, wandb and mlflow tables here "
        "(and [train] log_interval)",
    ]


def test_bridgec_names_keep_their_own_hints() -> None:
    """A bridgec key in the wrong table still says where it belongs; a typo still gets its did-you-mean."""
    assert messages(spec_toml(train={"micro_batch_size": 2})) == [
        "spec.toml:14: unknown key 'micro_batch_size' in [train]; hint: micro_batch_size belongs in [batch]"
    ]
    assert messages(spec_toml(model={"hiden_size": 64}))[0].endswith("hint: did you mean 'hidden_size'?")


def test_the_table_is_consistent_with_the_spec() -> None:
    bridgec_names = set(_field_types(Spec)) | {name for _, home in _tables(Spec, ()) for name in _field_types(home)}
    assert sorted(set(KEYS) & bridgec_names) == []  # such a name would never be looked up
    targets = [found for found in KEYS.values()] + [found for values in VALUES.values() for found in values.values()]
    assert {found for found in targets if isinstance(found, str)} == set(UNSUPPORTED)  # every feature is asked for
    homes = dict(_tables(Spec, ()))
    for found in targets:
        if isinstance(found, Here):
            assert found.table in homes, found  # a real table header
    for table, key in VALUES:
        assert key in _field_types(homes[f"[{table}]"]), (table, key)


def test_readme_section_is_current() -> None:
    readme = README.read_text(encoding="utf-8")
    current = readme[readme.index(foreign_keys.START) : readme.index(foreign_keys.END) + len(foreign_keys.END)]
    assert current == foreign_keys.markdown(), (
        "the README's 'Not supported yet' section is stale; run: "
        ".venv/bin/python -m bridgec.compiler.foreign_keys --write README.md"
    )
