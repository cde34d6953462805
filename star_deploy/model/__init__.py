"""The PyTorch reference of STAR, state-dict compatible with the official release."""
