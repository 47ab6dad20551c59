"""Fine-tuning: one engine (engine.py) for full fine-tuning and every PEFT family
(methods/), causal and seq2seq. Recipes (tunelab/recipe.py) configure it and pick
the trainer; nothing here imports them at run time."""
