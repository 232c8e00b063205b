"""lambdahat: the local learning coefficient of PyTorch models."""
