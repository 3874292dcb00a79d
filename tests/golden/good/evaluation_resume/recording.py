"""The standard forward step; in evaluation it also appends the first tokens of each sample to evaluated.jsonl."""

import functools
import json
from pathlib import Path

from bridgec.runtime.data import next_batch
from bridgec.runtime.loss import masked_token_loss
from bridgec.runtime.model import unwrap


def forward_step(state, data_iterator, model, return_schedule_plan=False):
    chunk = unwrap(model)
    batch = next_batch(data_iterator, pre_process=chunk.pre_process, post_process=chunk.post_process,
                       device=state.layout.device)
    if not chunk.training:
        with (Path(__file__).parent / "evaluated.jsonl").open("a", encoding="utf-8") as file:
            for sample in batch.tokens[:, :4].tolist():
                file.write(json.dumps({"step": state.step, "tokens": sample}) + "\n")
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)
    return output, functools.partial(masked_token_loss, batch.loss_mask)
