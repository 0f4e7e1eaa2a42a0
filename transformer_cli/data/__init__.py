"""Parallel text in: corpus readers and checks, the toy corpus, SentencePiece, `tfx
prepare` and its store of encoded splits, length-bucketed batching.
"""
