"""What the model is, in plain definitions without heavy imports.

Configuration, the graph contract, dtypes, per-scale tables, the portable sampler, the tokenizer,
argument checks, optional extras and the CPU's instruction sets.
"""
