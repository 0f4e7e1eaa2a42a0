"""The foundation every other part stands on: the config schema and its strict loader,
errors, atomic file IO, the runtime (device, precision, threads, seeds), the special
token ids, and the checkpoint format.
"""
