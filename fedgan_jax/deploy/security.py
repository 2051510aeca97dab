"""TLS material and hospital (node) authentication for the Flower deployment.

Two layers, both on unless a binary runs with `--insecure`:
  * TLS (gRPC): the server presents a certificate signed by a CA each hospital trusts
    (`--root_certificates`), so hospitals know they talk to the consortium's server and
    the traffic is encrypted.
  * Node authentication: each hospital holds an Ed25519 private key; the server holds
    the public key of every site on the roster (`--hospital_keys=DIR` with `SITE.pub`).
    Every message a hospital sends carries a signature over its whole content, the
    run's random nonce and the round, so the server accepts a reply only from the site
    it claims to be, unaltered, and for this run and round (no replays). Flower's legacy
    gRPC transport, the one with long-lived hospital processes, has no node
    authentication of its own; this is it, at the application layer.

Development material: `python -m fedgan_jax.deploy.make_credentials` (see there).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import struct
from typing import Sequence

from absl import logging
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
import numpy as np

_DOMAIN = b'fedgan_jax.deploy/v1'
# Validity of development certificates; production certificates come from the consortium.
DEV_CERTIFICATE_DAYS = 30


class AuthenticationError(ValueError):
  """A message whose signature does not verify against its site's registered key."""


def warn_insecure(binary: str) -> None:
  message = (f'{binary}: --insecure: TLS and hospital authentication are OFF. Anyone on the '
             'network can read the model and impersonate sites. Use only on loopback for tests.')
  logging.warning(message)
  print(f'WARNING: {message}', flush=True)


def write_hospital_key(directory: str, site: str) -> tuple[str, str]:
  """Creates `DIR/SITE.key` (private, keep at the hospital) and `DIR/SITE.pub` (to the server)."""
  os.makedirs(directory, exist_ok=True)
  private_key = ed25519.Ed25519PrivateKey.generate()
  private_path = os.path.join(directory, f'{site}.key')
  public_path = os.path.join(directory, f'{site}.pub')
  with open(os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'wb') as f:
    f.write(private_key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
  with open(public_path, 'wb') as f:
    f.write(private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
  return private_path, public_path


def load_private_key(path: str) -> ed25519.Ed25519PrivateKey:
  with open(path, 'rb') as f:
    key = serialization.load_pem_private_key(f.read(), password=None)
  if not isinstance(key, ed25519.Ed25519PrivateKey):
    raise ValueError(f'--private_key={path}: expected an Ed25519 key (make one with '
                     '`python -m fedgan_jax.deploy.security --make=key`).')
  return key


def load_hospital_keys(directory: str,
                       sites: Sequence[str]) -> dict[str, ed25519.Ed25519PublicKey]:
  """The public key `DIR/SITE.pub` of every roster site; a missing one is an error."""
  keys = {}
  for site in sites:
    path = os.path.join(directory, f'{site}.pub')
    if not os.path.exists(path):
      raise FileNotFoundError(f'--hospital_keys={directory}: no {site}.pub for roster site '
                              f'{site!r} (config.deploy.sites).')
    with open(path, 'rb') as f:
      key = serialization.load_pem_public_key(f.read())
    if not isinstance(key, ed25519.Ed25519PublicKey):
      raise ValueError(f'{path}: expected an Ed25519 public key.')
    keys[site] = key
  return keys


def reply_digest(nonce: bytes, site: str, client_id: int, round_index: int, arrays,
                 num_examples: int, losses: dict) -> bytes:
  """SHA-256 of everything in a round reply but the signature itself."""
  digest = hashlib.sha256(_DOMAIN + b'/reply')
  digest.update(nonce)
  digest.update(site.encode())
  digest.update(struct.pack('<qqq', client_id, round_index, num_examples))
  for array in arrays:
    array = np.ascontiguousarray(array)
    digest.update(repr((array.shape, str(array.dtype))).encode())
    digest.update(array.tobytes())
  for name in sorted(losses):
    digest.update(name.encode() + struct.pack('<d', float(losses[name])))
  return digest.digest()


def properties_digest(nonce: bytes, site: str, client_id: int) -> bytes:
  """SHA-256 of a hospital's answer to "who are you?" for this run."""
  digest = hashlib.sha256(_DOMAIN + b'/properties')
  digest.update(nonce)
  digest.update(site.encode())
  digest.update(struct.pack('<q', client_id))
  return digest.digest()


def sign(private_key: ed25519.Ed25519PrivateKey | None, digest: bytes) -> bytes:
  """The signature, or b'' when authentication is off (`--insecure`)."""
  return b'' if private_key is None else private_key.sign(digest)


def verify(public_key: ed25519.Ed25519PublicKey | None, digest: bytes, signature: bytes,
           site: str) -> None:
  """Raises `AuthenticationError` unless `signature` is `site`'s; no-op when auth is off."""
  if public_key is None:
    return
  try:
    public_key.verify(signature, digest)
  except Exception as error:  # cryptography raises InvalidSignature (and others on junk).
    raise AuthenticationError(f'message claiming to be {site!r} failed authentication: its '
                              'signature does not match the registered key '
                              f'({site}.pub under --hospital_keys).') from error


def write_dev_certificates(directory: str, hosts: Sequence[str]) -> dict[str, str]:
  """A throwaway CA and a server certificate for `hosts` (IPs or DNS names).

  Returns paths `{'ca': ca.crt, 'certificate': server.pem, 'key': server.key}`.
  """
  os.makedirs(directory, exist_ok=True)
  now = datetime.datetime.now(datetime.timezone.utc)
  valid = dict(not_valid_before=now - datetime.timedelta(minutes=5),
               not_valid_after=now + datetime.timedelta(days=DEV_CERTIFICATE_DAYS))
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'fedgan_jax development CA')])
  ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid['not_valid_before']).not_valid_after(valid['not_valid_after'])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))
  server_key = ec.generate_private_key(ec.SECP256R1())
  names = []
  for host in hosts:
    try:
      names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
      names.append(x509.DNSName(host))
  server = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid['not_valid_before']).not_valid_after(valid['not_valid_after'])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
  paths = {name: os.path.join(directory, file) for name, file in
           (('ca', 'ca.crt'), ('certificate', 'server.pem'), ('key', 'server.key'))}
  with open(paths['ca'], 'wb') as f:
    f.write(ca.public_bytes(serialization.Encoding.PEM))
  with open(paths['certificate'], 'wb') as f:
    f.write(server.public_bytes(serialization.Encoding.PEM))
  with open(os.open(paths['key'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'wb') as f:
    f.write(server_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))
  return paths
