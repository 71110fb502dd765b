"""TokMesh: the session and token service behind SSO, IAM, OAuth, SAML and CAS systems."""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("tokmesh")
except _metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+dev"
