"""Mechanisms that exist only for speed. Each has a plain twin elsewhere and a test proving
them equal, and is switched on at one visible point.
"""
