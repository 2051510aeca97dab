"""Writes development TLS certificates and hospital key pairs for the Flower deployment.

    python -m fedgan_jax.deploy.make_credentials --make=certificates --out=certs \
        --hosts=127.0.0.1,localhost        # ca.crt (to hospitals), server.pem, server.key
    python -m fedgan_jax.deploy.make_credentials --make=key --out=keys --site=general
                                           # general.key (stays at the hospital), general.pub

Development only: a production consortium issues certificates from its own PKI. See
`fedgan_jax/deploy/README.md`.
"""

from absl import app
from absl import flags

from fedgan_jax.deploy import security

_MAKE = flags.DEFINE_enum('make', None, ['certificates', 'key'],
                          'certificates: a development CA + server certificate; key: a '
                          "hospital's Ed25519 key pair.")
_OUT = flags.DEFINE_string('out', None, 'Directory to write into.')
_SITE = flags.DEFINE_string('site', None, 'Site name (with --make=key).')
_HOSTS = flags.DEFINE_list('hosts', ['127.0.0.1', 'localhost'],
                           'Server addresses the certificate is valid for (with '
                           '--make=certificates).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _MAKE.value or not _OUT.value:
    raise app.UsageError('--make and --out are required.')
  if _MAKE.value == 'key':
    if not _SITE.value:
      raise app.UsageError('--make=key needs --site=NAME.')
    print('\n'.join(security.write_hospital_key(_OUT.value, _SITE.value)))
  else:
    print('\n'.join(security.write_dev_certificates(_OUT.value, _HOSTS.value).values()))


if __name__ == '__main__':
  app.run(main)
