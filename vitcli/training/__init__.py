"""Training: the recipe (every default in one place), set-up, the trainer and its loop,
optimisers, the time budget, many processes, fine-tuning and run folders.
"""
