"""Process launching: torchrun, the deepspeed launcher, Slurm scripts.

Nothing in `nluft` imports this package.
"""
