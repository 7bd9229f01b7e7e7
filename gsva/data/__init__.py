"""Data: SAM/CLIP transforms, readers for every dataset of the paper in its official layout (referring:
``refer``/``grefcoco``; ReasonSeg; semantic/part segmentation: ``semseg``; VQA: ``vqa``; our custom format), the
training conversations built from them (``gres_dataset``, ``train_sets``), the family-weighted mixture
(``training_mix``, ``mixture``), synthetic scenes and stand-ins (``synth``, ``standins``), and collation."""
