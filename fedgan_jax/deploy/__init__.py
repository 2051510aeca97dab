"""Cross-silo deployment with Flower: `server` (the consortium) and `hospital` (each site).

See `fedgan_jax/deploy/README.md`. Needs the optional extra: `pip install -e .[flower]`.
"""
