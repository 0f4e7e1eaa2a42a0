"""Translations out: greedy and beam search, the KV caches and slot streaming, the one
module of decoding limits, `tfx translate`, and the CTranslate2 backend.
"""
