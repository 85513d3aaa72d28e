"""xdrec: cross-domain recommendation at Spark scale."""
__version__ = "0.1.0"
