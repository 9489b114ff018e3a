"""Triton kernels registered as CUDA implementations of the spectramind operators. Arrive with the kernels issue."""
