"""Pretraining: config, losses, optimizers, sharding, train step, loop, checkpoints."""
