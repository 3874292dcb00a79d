"""A forward_step hook that distils against a frozen teacher: what bench/distill_bench.py measures.

The teacher (twice the student's width and depth, same vocabulary) is built on
first use with megatron-core's local layer spec, frozen (no gradients, no
optimizer state), and run forward only under torch.no_grad(); the loss is the
student's cross entropy plus runtime.distill's vocabulary-parallel KL.
"""

import functools

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerConfig

from bridgec.runtime.data import next_batch
from bridgec.runtime.distill import masked_kd_loss, vocab_parallel_kl
from bridgec.runtime.model import unwrap

TEMPERATURE = 2.0
KD_SCALE = 1.0
_teacher = []


def teacher(student):
    if not _teacher:
        config = TransformerConfig(
            num_layers=8,
            hidden_size=256,
            num_attention_heads=8,
            use_cpu_initialization=True,
            tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        )
        model = GPTModel(
            config=config,
            transformer_layer_spec=get_gpt_layer_local_spec(),
            vocab_size=student.vocab_size,
            max_sequence_length=student.max_sequence_length,
            position_embedding_type="rope",
        )
        model.requires_grad_(False)
        model.eval()
        _teacher.append(model)
    return _teacher[0]


def kd_forward_step(state, data_iterator, model, return_schedule_plan=False):
    chunk = unwrap(model)
    batch = next_batch(
        data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process, device=state.layout.device
    )
    with torch.no_grad():
        teacher_logits = teacher(chunk)(batch.tokens, batch.position_ids, None)
    logits = model(batch.tokens, batch.position_ids, None)
    return logits, functools.partial(kd_loss, batch.loss_mask, batch.labels, teacher_logits)


def kd_loss(loss_mask, labels, teacher_logits, logits):
    """Cross entropy plus KD_SCALE x the KD loss, both summed over the real tokens (divided once by the step)."""
    group = parallel_state.get_tensor_model_parallel_group()
    lm_sum, count = masked_kd_loss(loss_mask, tensor_parallel.vocab_parallel_cross_entropy(logits.float(), labels))
    kd_sum, _ = masked_kd_loss(
        loss_mask, vocab_parallel_kl(logits, teacher_logits, temperature=TEMPERATURE, group=group)
    )
    metadata = {"lm loss": torch.stack([lm_sum.detach(), count]), "kd loss": torch.stack([kd_sum.detach(), count])}
    return lm_sum + KD_SCALE * kd_sum, count.to(torch.int), metadata
