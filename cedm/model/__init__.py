"""The generative model: EDM-preconditioned, cluster-conditioned UNet (C-EDM), its loss and its training."""
