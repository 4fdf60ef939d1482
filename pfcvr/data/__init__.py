"""Data: the synthetic benchmark, real-format readers, part pairs, the torch Dataset, the tokenizer."""
