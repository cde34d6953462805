"""Running the model: the scale loop over any backend, what from_pretrained loads, memory estimates."""
