"""Measuring mtl: the benchmark (`mtl bench`) against its floors and the plain per-episode
references, and `make gpu-check`."""
