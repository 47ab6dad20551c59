"""Fine-tuning: one engine (engine.py) for full fine-tuning and every PEFT family
(methods/), causal and seq2seq, configured by a recipe (config.py)."""
