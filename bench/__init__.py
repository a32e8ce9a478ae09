"""distill-bench: the harness of the few-step diffusion distillation benchmark."""
__version__ = "0.1.0"
