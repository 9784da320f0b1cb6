"""IndexBuilder: item embeddings, ScaNN index and retrieval SavedModels."""
