"""The GPU check (python -m tools.gpu_check): see __main__.py."""
