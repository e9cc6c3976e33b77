"""Training a run: the engine (device, precision, optimizer, the epoch loop, evaluation), metrics, the LR finder, torchrun."""
