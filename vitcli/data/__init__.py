"""The data: where images come from (folders, saved and hub datasets), the decoded image set,
its cache, and the augmentation applied to batches in training.
"""

from vitcli.errors import Range

# The fraction of the data held out for validation (`vit train --val-split`, and `vit eval
# --val-split` carving the same images again): here, with no imports beyond the error
# type, so that both commands' --help read it without loading the data code.
VAL_SPLIT = Range(0.0, 0.99)
