"""gmvae: cluster feature tables with a Gaussian Mixture VAE."""
__version__ = "0.1.0"
