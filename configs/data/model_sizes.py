"""Model widths and depths that fit an image size: `model_for_image_size(config, image_size)`.

The generator reaches `seed_size * 2**len(decoder_channels) * output_shuffle` pixels
and the discriminator halves the (unshuffled) image once per block, so each released
size needs its own shapes. 64 keeps `configs/common.py`'s defaults (the phantom
models); larger sizes add one upsampling stage and one discriminator block per
doubling, so the cost per pixel stays about the same. 28 (MedMNIST's native size)
cannot be halved below 7, so its generator starts at 14x14 and its discriminator
sees the image unfolded by 1 (28 -> 14 -> 7).
"""

import ml_collections

# image size -> (generator overrides, discriminator overrides).
SHAPES = {
    28: (dict(seed_size=14, encoder_channels=(64, 128), decoder_channels=(), output_shuffle=2),
         dict(channels=(32, 64), input_unshuffle=1)),
    32: (dict(seed_size=8, encoder_channels=(64, 128), decoder_channels=(32,), output_shuffle=2),
         dict(channels=(32, 64, 128), input_unshuffle=2)),
    64: (dict(seed_size=8, encoder_channels=(64, 128), decoder_channels=(32, 16),
              output_shuffle=2),
         dict(channels=(32, 64, 128), input_unshuffle=2)),
    128: (dict(seed_size=8, encoder_channels=(64, 128), decoder_channels=(64, 32, 16),
               output_shuffle=2),
          dict(channels=(32, 64, 128, 256), input_unshuffle=2)),
    # 224 = 7 * 2**4 * 2 (ZhangLab's released size); D unshuffles to 112 and halves to 7.
    224: (dict(seed_size=7, encoder_channels=(64, 128), decoder_channels=(128, 64, 32, 16),
               output_shuffle=2),
          dict(channels=(32, 64, 128, 256), input_unshuffle=2)),
    256: (dict(seed_size=8, encoder_channels=(64, 128), decoder_channels=(128, 64, 32, 16),
               output_shuffle=2),
          dict(channels=(32, 64, 128, 256, 256), input_unshuffle=2)),
}
# Above this size the dense autoencoder's first layer (pixels x hidden) gets large: use conv.
MAX_DENSE_AUTOENCODER_SIZE = 64


def model_for_image_size(config: ml_collections.ConfigDict, image_size: int) -> None:
  """Sets `config.model` (and the F-AD architecture) for `image_size`, in place."""
  if image_size not in SHAPES:
    raise ValueError(f'data.image_size: {image_size} has no model shapes; choose one of '
                     f'{sorted(SHAPES)} (configs/data/model_sizes.py).')
  generator, discriminator = SHAPES[image_size]
  config.model.generator.update(generator)
  config.model.discriminator.update(discriminator)
  if image_size > MAX_DENSE_AUTOENCODER_SIZE:
    config.anomaly.update(architecture='conv', channels=(32, 64, 128), pixel_shuffle=2)


def shrink_for_runlocal(config: ml_collections.ConfigDict) -> None:
  """Quarter-width models (same depths, so the same image size) for seconds-long smoke runs."""
  quarter = lambda widths: tuple(max(8, w // 4) for w in widths)
  generator, discriminator = config.model.generator, config.model.discriminator
  generator.update(encoder_channels=quarter(generator.encoder_channels),
                   decoder_channels=quarter(generator.decoder_channels),
                   embedding_dim=32, z_dim=16)
  discriminator.channels = quarter(discriminator.channels)

