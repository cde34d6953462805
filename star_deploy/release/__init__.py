"""Weight releases: finding one on disk (``finder``, no torch) and loading it (``weights``, torch).

Also the tensor shapes a checkpoint states, random weights of a preset's shape, and Hugging Face Hub folders.
"""
