"""Example requests the repository ships (``sample_request.json``) and their generator (``make_sample``)."""
