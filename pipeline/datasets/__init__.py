"""Dataset adapters: MovieLens-1M and the synthetic generator."""
