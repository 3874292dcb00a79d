"""Independent reference for the token-aware loss: one process, whole first global batch at once.

Imports a compiled single-process script as a module (its main() does not run),
builds the same portable-initialised model, takes the step's samples 0..G-1
straight from the dataset and computes sum(CE x mask) / sum(mask) with plain
torch cross entropy on the logits. Prints {"loss": ...} as JSON.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import torch
import torch.nn.functional as F

spec = importlib.util.spec_from_file_location("compiled", sys.argv[1])
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)

run.cpu_compat.apply()
layout = run.initialize(
    device="cpu", tensor=1, pipeline=1, virtual_pipeline=None, context=1, expert=1, seed=run.SEED, timeout_minutes=5
)
model = run.build_model(
    run.model_provider,
    layout=layout,
    init_scheme=run.INIT_SCHEME,
    seed=run.SEED,
    init_std=run.INIT_METHOD_STD,
    num_layers=run.NUM_LAYERS,
    tied_output=True,
    dtype="fp32",
    distributed_optimizer=False,
)[0]
train = run.datasets().train
samples = [train[i] for i in range(run.GLOBAL_BATCH_SIZE)]
batch = {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
with torch.no_grad():
    logits = model(batch["tokens"], batch["position_ids"], None)
losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), reduction="none")
mask = batch["loss_mask"].reshape(-1).float()
print(json.dumps({"loss": float((losses * mask).sum() / mask.sum()), "masked": int((mask == 0).sum())}))
