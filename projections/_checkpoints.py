"""Signed checkpoints: Ed25519 over ``(run, n, h_n)``, so a truncated tail is detectable.

The projector signs the head of every run that reaches a terminal state, with the
operator's key (``MAINSPRING_SIGNING_KEY``: a PEM file of an Ed25519 private key;
``mainspring audit keygen`` makes one). Verifying needs only the public key.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from schemas import ConfigError


def checkpoint_message(run_id: str, n: int, link: bytes) -> bytes:
    """The exact bytes that are signed."""
    return f"mainspring-checkpoint/v1\n{run_id}\n{n}\n{link.hex()}".encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    private: Ed25519PrivateKey

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    def sign(self, run_id: str, n: int, link: bytes) -> bytes:
        return self.private.sign(checkpoint_message(run_id, n, link))

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | Path) -> Signer:
        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the signing key {path}: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, private_path: str | Path, public_path: str | Path) -> None:
        Path(private_path).write_bytes(
            self.private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        Path(private_path).chmod(0o600)
        Path(public_path).write_bytes(public_pem(self.private.public_key()))


def public_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the public key {path}: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def verify_signature(
    public: Ed25519PublicKey, run_id: str, n: int, link: bytes, signature: bytes
) -> bool:
    try:
        public.verify(signature, checkpoint_message(run_id, n, link))
    except InvalidSignature:
        return False
    return True
