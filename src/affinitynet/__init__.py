"""affinitynet: pixel-level labels from image-level tags (AffinityNet, Ahn & Kwak, CVPR 2018)."""
__version__ = "0.1.0"
