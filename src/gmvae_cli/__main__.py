"""`python -m gmvae_cli` (and `torchrun -m gmvae_cli`) run the CLI."""

from gmvae_cli.cli import main

main()
