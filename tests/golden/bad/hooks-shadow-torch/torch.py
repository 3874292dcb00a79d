"""A user's own forward step, in Megatron Bridge's signature."""

import functools

from bridgec.runtime.data import next_batch
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import unwrap


def forward_step(state, data_iterator, model, return_schedule_plan=False):
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process,
                       device=state.layout.device)
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    return output, functools.partial(masked_token_loss, batch.loss_mask)
