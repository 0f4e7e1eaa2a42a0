"""The learner's views: plain data computed by the training code itself, their text
rendering, plots, training curves and attention maps.
"""
