"""SF-V adversarial training: noise samplers, losses, the train state and the pure train step."""
