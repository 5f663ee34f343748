"""Coders in the loop: review tiers in the EAF, import of the reviewed files, agreement, calibration, fine-tuning.

`importer` reads reviewed `.eaf` files into one table (reviewed.csv), `agreement` measures tool vs coder (and coder vs
coder), `calibrate` fits a study's spotting cut-off and AU thresholds, `finetune` adapts the AU model to the review.
The tier names and the decision vocabulary are shared with the EAF writer (au_annotate/writers/review_schema.py).
The workflow is in docs/review.md.
"""
