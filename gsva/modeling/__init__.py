"""GSVA model components: LLaVA language model, [SEG] slots, [SEG] projector, SAM mask decoding."""
