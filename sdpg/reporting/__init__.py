"""Reporting: MLflow runs of an ablation or sweep to paper-style figures, tables and an HTML page."""
