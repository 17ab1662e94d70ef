"""The data: where images come from (folders, saved and hub datasets), the decoded image set,
its cache, and the augmentation applied to batches in training.
"""
