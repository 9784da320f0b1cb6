"""FeatureCorrelation: mutual information between item features."""
