"""Sampling from a C-EDM model: ODE samplers, classifier-free guidance, image generation with per-image seeds."""
