"""Converters and loaders for released checkpoints (SAM, LLaVA, GSVA/LISA) into GSVA's own format."""
