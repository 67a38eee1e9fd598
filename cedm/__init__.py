"""cedm: label-free conditional image generation (cluster-conditioned EDM).

Data flow: dataset -> features -> clusters -> model -> samples.
"""
__version__ = "0.1.0"
