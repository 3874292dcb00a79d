def forward_step(data_iterator, model):
    return model(next(data_iterator)), None


def loss(output_tensor):
    return output_tensor.sum(), {}
