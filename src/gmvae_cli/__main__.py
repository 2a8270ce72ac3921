"""`python -m gmvae_cli` (and `torchrun -m gmvae_cli`) run the CLI."""

from gmvae_cli.cli import main

if __name__ == "__main__":  # select-k's workers import the main module again (select_k.py)
    main()
