"""Classifier: backbones (`models`), batched augmentation (`augment`), training hooks (`hooks`), and the training
loop with checkpointing and output extraction (`training`)."""
