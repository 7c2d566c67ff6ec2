"""cleandiffuser: diffusion and consistency models for decision making."""
__version__ = "0.1.0"
