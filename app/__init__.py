"""Stable Diffusion 2.1 text-to-image generator: engine, CLI and web app."""
