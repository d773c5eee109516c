"""EDM maths and samplers of Stable Video Diffusion / SF-V."""
