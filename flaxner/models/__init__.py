"""What a model family needs: the Flax encoders, loading and weights, the compact vocabulary, heads."""
