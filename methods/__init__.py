"""Built-in methods; importing this package registers them."""

from ssl_zoo.methods import croco, dino, gmml, mae, pixpro, rad_dino, satmae_pp, selfie, simclrv2, sit  # noqa: F401
from ssl_zoo.methods.base import Method, build_method

__all__ = ["Method", "build_method"]
