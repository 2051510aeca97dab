"""The same FedAvg round written the obvious PyTorch way (CPU or CUDA): the peer to beat.

    /work/venvs/torch/bin/python -m benchmarks.torch_round --clients=3,8,32 \
        --round_json=/tmp/round.json --json=/tmp/torch_round.json

Torch lives in its own virtual environment and never in the project's dependencies
(`python3 -m venv /work/venvs/torch && /work/venvs/torch/bin/pip install torch==2.13.0`), so
this script imports neither jax nor absl (argparse instead of flags). Its defaults mirror
configs/phantom.py; keep them in step when the config changes.

The networks are fedgan_jax.models' G and D rewritten layer for layer (FiLM U-Net generator
with nearest-neighbour upsampling, pixel-shuffle output and blur; strided residual projection
discriminator with input unshuffle, minibatch-std and attribute head), the client is K
local (D step, G step) pairs with fresh Adam states, and the server adds the example-weighted
mean delta (FedAvg, server SGD with learning rate 1). A round is a Python loop over clients,
as users would write it. With `--round_json` (benchmarks/round.py's output) the JSON gets
`jax_round_s / torch_round_s` per JAX strategy. `--device=cuda` runs the same loop on a GPU
(benchmarks/gpu.sh), synchronizing before each clock read.
"""

import argparse
import copy
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F


def leaky(x):
  return F.leaky_relu(x, 0.2)


def norm_groups(channels, max_groups=8):
  return max(1, min(max_groups, channels // 2))


def depth_to_space(x, factor):
  return F.pixel_shuffle(x, factor)


def blur(x):
  """Separable [1, 2, 1] / 4 blur with edge padding."""
  padded = F.pad(x, (1, 1, 1, 1), mode='replicate')
  h = 0.25 * padded[..., :, :-2] + 0.5 * padded[..., :, 1:-1] + 0.25 * padded[..., :, 2:]
  return 0.25 * h[..., :-2, :] + 0.5 * h[..., 1:-1, :] + 0.25 * h[..., 2:, :]


class FiLM(nn.Module):
  def __init__(self, embedding_dim, features):
    super().__init__()
    self.dense = nn.Linear(embedding_dim, 2 * features)
    nn.init.zeros_(self.dense.weight)
    nn.init.zeros_(self.dense.bias)

  def forward(self, x, embedding):
    scale, shift = self.dense(embedding)[:, :, None, None].chunk(2, dim=1)
    return x * (1.0 + scale) + shift


class ConditionalResBlock(nn.Module):
  def __init__(self, in_features, features, embedding_dim):
    super().__init__()
    self.norm1 = nn.GroupNorm(norm_groups(in_features), in_features, affine=False)
    self.film1 = FiLM(embedding_dim, in_features)
    self.conv1 = nn.Conv2d(in_features, features, 3, padding=1)
    self.norm2 = nn.GroupNorm(norm_groups(features), features, affine=False)
    self.film2 = FiLM(embedding_dim, features)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1)
    self.shortcut = None if in_features == features else nn.Conv2d(in_features, features, 1)

  def forward(self, x, embedding):
    h = self.conv1(leaky(self.film1(self.norm1(x), embedding)))
    h = self.conv2(leaky(self.film2(self.norm2(h), embedding)))
    return (x if self.shortcut is None else self.shortcut(x)) + h


class Generator(nn.Module):
  def __init__(self, args):
    super().__init__()
    self.seed_size, enc, dec = args.seed_size, args.encoder_channels, args.decoder_channels
    self.shuffle = args.output_shuffle
    emb = args.embedding_dim
    self.embed = nn.Sequential(nn.Linear(args.condition_dim + args.z_dim, emb), nn.LeakyReLU(0.2),
                               nn.Linear(emb, emb), nn.LeakyReLU(0.2))
    self.seed = nn.Linear(emb, self.seed_size ** 2 * enc[0])
    self.encoder = nn.ModuleList(
        ConditionalResBlock(enc[max(i - 1, 0)], f, emb) for i, f in enumerate(enc))
    self.unet_decoder = nn.ModuleList()
    width = enc[-1]
    for f in reversed(enc[:-1]):
      self.unet_decoder.append(ConditionalResBlock(width + f, f, emb))
      width = f
    self.decoder = nn.ModuleList()
    for f in dec:
      self.decoder.append(ConditionalResBlock(width, f, emb))
      width = f
    self.out_norm = nn.GroupNorm(norm_groups(width), width)
    self.out_conv = nn.Conv2d(width, self.shuffle ** 2, 3, padding=1)

  def forward(self, condition, z):
    embedding = self.embed(torch.cat([condition, z], dim=-1))
    h = self.seed(embedding).view(-1, self.encoder[0].conv1.in_channels, self.seed_size,
                                  self.seed_size)
    skips = []
    for i, block in enumerate(self.encoder):
      if i:
        h = F.avg_pool2d(h, 2)
      h = block(h, embedding)
      skips.append(h)
    skips.pop()
    for block in self.unet_decoder:
      h = F.interpolate(h, scale_factor=2, mode='nearest')
      h = block(torch.cat([h, skips.pop()], dim=1), embedding)
    for block in self.decoder:
      h = block(F.interpolate(h, scale_factor=2, mode='nearest'), embedding)
    h = self.out_conv(leaky(self.out_norm(h)))
    return torch.tanh(blur(depth_to_space(h, self.shuffle)))


class DownBlock(nn.Module):
  def __init__(self, in_features, features):
    super().__init__()
    self.conv1 = nn.Conv2d(in_features, features, 3, stride=2, padding=1)
    self.conv2 = nn.Conv2d(features, features, 3, padding=1)
    self.shortcut = None if in_features == features else nn.Conv2d(in_features, features, 1)

  def forward(self, x):
    h = self.conv2(leaky(self.conv1(leaky(x))))
    shortcut = F.avg_pool2d(x, 2)
    return (shortcut if self.shortcut is None else self.shortcut(shortcut)) + h


class Discriminator(nn.Module):
  def __init__(self, args):
    super().__init__()
    channels, self.unshuffle, self.group = args.d_channels, args.input_unshuffle, args.mbstd
    self.stem = nn.Conv2d(self.unshuffle ** 2, channels[0], 3, padding=1)
    self.blocks = nn.ModuleList(
        DownBlock(channels[max(i - 1, 0)], f) for i, f in enumerate(channels))
    self.mbstd_conv = nn.Conv2d(channels[-1] + 1, channels[-1], 3, padding=1)
    self.unconditional = nn.Linear(channels[-1], 1)
    self.projection = nn.Linear(args.condition_dim, channels[-1], bias=False)
    self.attribute_head = nn.Linear(channels[-1], args.condition_dim // 2)

  def forward(self, images, condition):
    h = self.stem(F.pixel_unshuffle(images, self.unshuffle))
    for block in self.blocks:
      h = block(h)
    if self.group:
      n, c, height, width = h.shape
      grouped = h.view(n // self.group, self.group, c, height, width)
      spread = torch.sqrt(grouped.var(dim=1, unbiased=False) + 1e-8).mean(dim=(1, 2, 3))
      spread = spread.repeat_interleave(self.group)[:, None, None, None].expand(n, 1, height,
                                                                               width)
      h = self.mbstd_conv(torch.cat([h, spread], dim=1))
    h = leaky(h).mean(dim=(2, 3))
    logit = self.unconditional(h)[:, 0] + (self.projection(condition) * h).sum(dim=-1)
    return logit, self.attribute_head(h)


def local_update(args, generator, discriminator, batches):
  """K (D step, G step) pairs with fresh Adam states, as fedgan_jax.federated.client."""
  d_opt = torch.optim.Adam(discriminator.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
  g_opt = torch.optim.Adam(generator.parameters(), lr=args.learning_rate, betas=(0.5, 0.999))
  half = args.condition_dim // 2
  for images, condition in batches:
    values, mask = condition[:, :half], condition[:, half:]
    with torch.no_grad():
      fake = generator(condition, torch.randn(len(condition), args.z_dim,
                                               device=condition.device))
    logits, attributes = discriminator(torch.cat([images, fake]), torch.cat([condition] * 2))
    real_logits, fake_logits = logits.chunk(2)
    attribute = (F.binary_cross_entropy_with_logits(attributes[:len(images)], values,
                                                    reduction='none') * mask).sum(-1)
    d_loss = (F.softplus(-real_logits) + F.softplus(fake_logits)).mean() + attribute.mean()
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_opt.step()

    for p in discriminator.parameters():
      p.requires_grad_(False)
    fake = generator(condition, torch.randn(len(condition), args.z_dim,
                                               device=condition.device))
    logits, attributes = discriminator(fake, condition)
    predicted = torch.sigmoid(attributes) * mask
    cond = 1.0 - F.cosine_similarity(predicted, values * mask, dim=-1, eps=1e-8)
    g_loss = (F.softplus(-logits) + cond).mean()
    g_opt.zero_grad(set_to_none=True)
    g_loss.backward()
    g_opt.step()
    for p in discriminator.parameters():
      p.requires_grad_(True)


def fedavg_round(args, global_models, local_models, client_batches, weights):
  """A Python loop over clients, then the example-weighted mean delta added to the server."""
  global_states = [m.state_dict() for m in global_models]
  totals = [{k: torch.zeros_like(v) for k, v in s.items()} for s in global_states]
  for batches, weight in zip(client_batches, weights):
    for model, state in zip(local_models, global_states):
      model.load_state_dict(state)
    local_update(args, *local_models, batches)
    for model, state, total in zip(local_models, global_states, totals):
      for k, v in model.state_dict().items():
        total[k] += weight * (v - state[k])
  with torch.no_grad():
    for model, total in zip(global_models, totals):
      for k, v in model.state_dict().items():
        v += total[k] / sum(weights)


def random_round_inputs(args, clients, generator):
  """uint8-like images in [-1, 1] and 0/1 conditions (values do not change the cost)."""
  def batch():
    images = torch.randint(0, 256, (args.batch_size, 1, args.image_size, args.image_size),
                           generator=generator).float() / 127.5 - 1.0
    condition = torch.randint(0, 2, (args.batch_size, args.condition_dim),
                              generator=generator).float()
    return images, condition
  return ([[batch() for _ in range(args.local_steps)] for _ in range(clients)],
          [float(torch.randint(16, 64, (), generator=generator)) for _ in range(clients)])


def synchronize(device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def time_clients(args, clients):
  device = torch.device(args.device)
  torch.manual_seed(0)
  global_models = [Generator(args).to(device), Discriminator(args).to(device)]
  local_models = copy.deepcopy(global_models)
  generator = torch.Generator().manual_seed(clients)
  times = []
  for r in range(args.warmup + args.rounds):
    batches, weights = random_round_inputs(args, clients, generator)
    # Inputs are on the device before the clock starts, as a JAX round's batches are.
    batches = [[(images.to(device), condition.to(device)) for images, condition in client]
               for client in batches]
    synchronize(device)
    started = time.perf_counter()
    fedavg_round(args, global_models, local_models, batches, weights)
    synchronize(device)
    if r >= args.warmup:
      times.append(time.perf_counter() - started)
  return {'strategy': 'torch_loop', 'clients': clients, 'round_s': statistics.median(times),
          'round_times_s': [round(t, 4) for t in times]}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ints = lambda text: tuple(int(x) for x in text.split(','))
  parser.add_argument('--clients', type=ints, default=(3, 8, 32))
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--device', default='cpu', help="torch device: 'cpu' or 'cuda'")
  parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
  # configs/common.py and configs/phantom.py defaults.
  parser.add_argument('--image_size', type=int, default=64)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--local_steps', type=int, default=2)
  parser.add_argument('--learning_rate', type=float, default=6e-4)
  parser.add_argument('--seed_size', type=int, default=8)
  parser.add_argument('--encoder_channels', type=ints, default=(64, 128))
  parser.add_argument('--decoder_channels', type=ints, default=(32, 16))
  parser.add_argument('--output_shuffle', type=int, default=2)
  parser.add_argument('--embedding_dim', type=int, default=128)
  parser.add_argument('--z_dim', type=int, default=64)
  parser.add_argument('--d_channels', type=ints, default=(32, 64, 128))
  parser.add_argument('--input_unshuffle', type=int, default=2)
  parser.add_argument('--mbstd', type=int, default=4)
  parser.add_argument('--condition_dim', type=int, default=32,
                      help='schema.model_dim of the phantom conditions (2 x 16 values)')
  parser.add_argument('--round_json', default='', help='benchmarks/round.py output')
  parser.add_argument('--json', default='')
  return parser.parse_args(argv)


def main(argv):
  args = parse_args(argv)
  if args.threads:
    torch.set_num_threads(args.threads)
  load_before = [round(x, 2) for x in os.getloadavg()]
  results = [time_clients(args, c) for c in args.clients]
  if args.round_json:
    jax_rows = json.loads(pathlib.Path(args.round_json).read_text())['results']
    for row in results:
      row['jax_over_torch'] = {j['strategy']: round(j['round_s'] / row['round_s'], 3)
                               for j in jax_rows if j['clients'] == row['clients']}
  device_name = (torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu')
  report = {'results': results, 'device': device_name, 'machine': {
      'cpu_count': os.cpu_count(), 'torch': torch.__version__,
      'torch_threads': torch.get_num_threads(), 'python': platform.python_version(),
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'load_average_before': load_before,
      'load_average': [round(x, 2) for x in os.getloadavg()],
      'command': ' '.join(['python'] + sys.argv)},
      'config': {k: v for k, v in vars(args).items() if k not in ('json', 'round_json')}}
  text = json.dumps(report, indent=1)
  if args.json:
    pathlib.Path(args.json).write_text(text)
  print(text)


if __name__ == '__main__':
  main(sys.argv[1:])
