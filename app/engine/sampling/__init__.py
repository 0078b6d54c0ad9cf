"""The engine's own sampling loop, reproducing AUTOMATIC1111 1.10 (denoisers, schedules, samplers, noise)."""
