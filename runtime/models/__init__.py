"""One parameter inventory per model family (:mod:`bridgec.runtime.models.gpt`)."""
