"""resdeg: why deep networks degrade without residual connections, measured and published."""
__version__ = "0.1.0"
