"""igam-pytorch: a PyTorch port of IGAM (Chan, Tay, Ong, CVPR 2020; arXiv 1912.05699).

(Public API listing: filled in as the package grows.)
"""

__version__ = "0.1.0"
