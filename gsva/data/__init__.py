"""Data: SAM/CLIP transforms, the gRefCOCO reader, synthetic GRES scenes, conversation samples and collation."""
