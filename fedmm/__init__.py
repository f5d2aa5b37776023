"""fedmm: a federated multimodal (image + report) learning simulator built on Flower."""

__version__ = "0.1.0"
