"""Stage 1, the data: the input contract, readers, fetch, ingest with quarantine, splits, text
embeddings and the Delta feature tables (``tables``), with the lineage of every run."""
