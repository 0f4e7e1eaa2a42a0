"""Translations out: greedy and beam search, the KV caches and slot streaming, `tfx
translate` and `tfx evaluate`.
"""
