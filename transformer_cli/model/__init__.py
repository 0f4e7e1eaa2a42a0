"""The Transformer of Vaswani et al. 2017: embeddings and positions, attention, masks,
layers. A pure nn.Module that imports only core (and fast).
"""
