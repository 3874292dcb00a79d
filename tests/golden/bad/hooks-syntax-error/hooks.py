import torch


def forward_step(state, data_iterator, model, return_schedule_plan=False)
    tokens = next(data_iterator)
    return model(tokens)
