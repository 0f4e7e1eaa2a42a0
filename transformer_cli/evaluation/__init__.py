"""Scoring what decoding produces: `tfx evaluate`, its scores, and checkpoint averaging."""
