"""Versioned SQL migrations, shipped as package data (`*.sql`) and applied by `flusia migrate`
(application/migrate.py). Files are `NNNN_name.sql`, one number each, never edited once applied."""
