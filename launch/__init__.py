"""The shared runtime (training loop, sharding, checkpoints, data, evaluation) and the command-line entry points."""
