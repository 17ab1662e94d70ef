"""The model: its config and presets, the ViT in the order of the method, patches,
explanations, preprocessing and the self-describing model file.

Everything else in vitcli builds on this package; it imports nothing above it.
"""
