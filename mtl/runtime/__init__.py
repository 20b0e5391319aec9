"""What every run leans on: the device, torchrun, atomic writes, checkpoints, the run lock,
TensorBoard and progress, timing."""
