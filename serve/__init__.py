"""The inference server (FastAPI routes, batcher, metrics). Arrives with the serving issue."""
