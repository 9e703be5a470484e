"""The same KL and evaluation core applied to language models (TRL trainers, lm-eval retention)."""
