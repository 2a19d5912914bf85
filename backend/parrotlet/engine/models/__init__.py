"""The Llama family in plain torch, and the loaders that fill it with weights."""
