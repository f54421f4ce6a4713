"""clipcore: contrastive vision-language training from scratch."""
__version__ = "0.1.0"
