"""Helpers for the Docker path on a machine without a registry (what `make test-docker` uses).

- `engine`: make sure the Docker engine tools exist (apt-get when missing) and that an engine
  answers; start `dockerd` when none does and stop only what was started.
- `base_images`: the base images the Dockerfiles need, made locally (debootstrap, Debian's
  `redis-server`) and cached by tag.
"""
