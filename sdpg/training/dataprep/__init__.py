"""``sdpg-data``: from a dataset to the training rows the trainer reads.

``prepare`` reads a source (a Hugging Face dataset through ``datasets``, a local parquet / JSONL / CSV, or the
SDPG authors' verl parquet) into plain rows ``{id, problem, answer, solution}`` with a stable id per row
(a hash of the normalised problem), drops exact and near duplicates, and writes a data card beside the file.
``contexts`` generates a verified privileged context (a worked solution) per row with a teacher model.
``check`` looks for evaluation problems in a training set. Every output appears whole or not at all.
"""
