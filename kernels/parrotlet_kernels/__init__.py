"""Attention backends behind one interface: the torch reference (CPU, the oracle) and flashinfer."""
