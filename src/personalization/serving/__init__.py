"""The read path: preferences snapshot, login pre-warm, flags, recent content, reranking (see service.py)."""
