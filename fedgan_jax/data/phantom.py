"""Procedural chest-radiograph phantoms whose patient records cause the images.

The default data of the project, made in seconds without downloads. Each patient
record (age, sex, view, history, BMI, labs, findings) sets the parameters of a
drawing in normalized coordinates (x, y in [-1, 1], y down, patient's left on the
image right as in a PA film), so conditioning is learnable and measurable:
  age -> bone density (rib/clavicle brightness), lung height, growth of children;
  sex -> thorax width/height, breast shadows; AP view -> magnified heart, higher
  clavicles; BMI -> thicker, denser soft tissue; COPD -> taller, darker lungs with
  flat domes; cardiac device -> bright generator with a lead to the heart.
Findings: pneumonia (patchy opacity in a lung zone), nodules (small round spots),
effusion (fluid level at a lung base blunting the costophrenic angle) and
cardiomegaly (heart wider than half the thorax). Hospitals differ in patient mix
and scanner (window, gamma, noise, blur).

Everything is vectorized numpy over chunks of images; randomness comes only from
the `np.random.Generator`s passed in, so a seed fixes the federation.
"""

import dataclasses
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from fedgan_jax.data import conditions as conditions_lib
from fedgan_jax.data import dataset as dataset_lib

SEX = ('F', 'M')
VIEW = ('PA', 'AP')
HISTORY = ('copd', 'cardiac_device', 'smoker')
FINDINGS = ('pneumonia', 'nodule', 'effusion', 'cardiomegaly')
RECORD_KEYS = ('age', 'sex', 'view', 'history', 'bmi', 'crp', 'severity_score', 'diuretic',
               'findings')
_CATEGORIES = {'sex': SEX, 'view': VIEW, 'history': HISTORY, 'diuretic': ('diuretic',),
               'findings': FINDINGS}


@dataclasses.dataclass
class Demographics:
  """How patient records are drawn (`sample_records`): `data_config.demographics`.

  A world preset, not an experiment knob: its numbers live in `configs/data/phantom.py`
  (measured once from ChestX-ray14 metadata, or set by hand), which builds it; one field is
  overridden from the command line by name, e.g. `--config.data.demographics.bmi_mean=30`.
  Logistic models are in age decades past `history_reference_age`; per-finding tuples follow
  `FINDINGS`.
  """
  age_bin_edges: tuple
  age_bin_counts: tuple
  age_max_valid: float          # Ages above are entry errors in the source metadata.
  patient_id_stride: int        # Hospital k's patients are k * stride + 1, 2, ...
  male_fraction: float
  ap_fraction: float
  smoker_probability: float
  copd_logit_intercept: float
  copd_logit_per_decade: float
  copd_logit_smoker: float
  device_logit_intercept: float
  device_logit_per_decade: float
  history_reference_age: float
  bmi_mean: float
  bmi_std: float
  bmi_per_decade: float
  bmi_min: float
  bmi_max: float
  crp_median_normal: float
  crp_median_pneumonia: float
  crp_median_other_finding: float
  crp_log_sigma: float
  crp_max: float
  crp_missing_probability: float
  severity_baseline: float
  severity_per_finding: tuple
  severity_per_decade: float
  severity_noise_std: float
  diuretic_logit_intercept: float
  diuretic_logit_effusion: float
  diuretic_logit_cardiomegaly: float
  diuretic_logit_per_decade: float
  finding_weights: tuple
  finding_cooccurrence_probability: float


@dataclasses.dataclass
class Site:
  """One hospital's patient mix and scanner look: an entry of `data_config.hospitals`.

  Attributes:
    name: site name in logs.
    examples: images (= patients) at this site.
    age_bin_weights: multipliers of the population's age histogram, one per age bin.
    window_low: attenuation shown as black.
    window_high: attenuation shown as white.
    gamma: display gamma applied after windowing (> 1 darkens mid-tones).
    noise_std: std of additive detector noise in [0, 1] display units.
    blur_sigma: Gaussian blur std as a fraction of the image width (0 = sharp).
    ap_fraction: share of AP (bedside) films; ICUs take more.
  """
  name: str
  examples: int
  age_bin_weights: tuple
  window_low: float
  window_high: float
  gamma: float
  noise_std: float
  blur_sigma: float
  ap_fraction: float


@dataclasses.dataclass(frozen=True)
class Anatomy:
  """Geometry (image half-widths) and densities (display units, ~0 air .. ~1 bone) of the drawing.

  Overridable by name from `data_config.anatomy`.
  """
  thorax_half_width: float = 0.8  # Inner rib cage of an adult man.
  female_width_scale: float = 0.91
  female_height_scale: float = 0.95
  shape_jitter: float = 0.03  # Relative std of individual thorax width/height.
  position_jitter: float = 0.03  # Std of the patient's shift on the film.
  apex_jitter: float = 0.02
  dome_jitter: float = 0.15  # Relative std of the dome height.
  newborn_scale: float = 0.72  # Thorax size at birth relative to adult; grows until growth_age.
  growth_age: float = 18.0
  lung_apex: float = -0.72
  lung_height: float = 1.3  # Apex to diaphragm at the reference age.
  reference_age: float = 45.0
  lung_height_per_decade: float = -0.03  # Age -> lung volume.
  dome_height: float = 0.24
  copd_height_scale: float = 1.14
  copd_dome_scale: float = 0.25
  copd_extra_air: float = 0.07
  soft_tissue: float = 0.45
  reference_bmi: float = 25.0
  soft_tissue_per_bmi: float = 0.008
  fat_thickness: float = 0.05
  fat_per_bmi: float = 0.012
  breast_density: float = 0.11
  lung_air: float = 0.34
  abdomen_density: float = 0.18
  trachea_air: float = 0.12
  clavicle_weight: float = 1.5
  mediastinum_density: float = 0.2
  heart_density: float = 0.22
  cardiothoracic_ratio: float = 0.44
  cardiomegaly_ratio: float = 0.68
  ratio_jitter: float = 0.025
  ap_magnification: float = 1.13
  ap_clavicle_lift: float = 0.08
  bone_density: float = 0.11  # Until bone_loss_age; then falls linearly with age.
  bone_loss_age: float = 30.0
  bone_loss_per_decade: float = 0.015
  bone_min: float = 0.04
  bone_jitter: float = 0.007
  ribs_per_lung: float = 9.0
  rib_fraction: float = 0.42  # Share of the rib period that is bone.
  texture_amplitude: float = 0.012
  texture_frequency: float = 5.0  # Std of the markings' spatial frequencies.
  hilum_density: float = 0.07
  device_density: float = 0.9
  pneumonia_density: float = 0.5
  pneumonia_radius: tuple[float, float] = (0.24, 0.34)
  pneumonia_patchiness: float = 14.0  # Std of the patches' spatial frequencies.
  nodule_density: float = 0.55
  nodule_radius: tuple[float, float] = (0.06, 0.09)
  max_nodules: int = 3
  effusion_level: tuple[float, float] = (0.25, 0.45)  # Fluid height as a fraction of lung height.
  effusion_density: float = 0.08
  effusion_sides: tuple[float, float, float] = (0.4, 0.35, 0.25)  # P(right, left, both).
  edge_pixels: float = 1.0  # Width of anti-aliased edges.


def _get(tree: Any, name: str, default: Any = None) -> Any:
  value = tree.get(name, default) if hasattr(tree, 'get') else getattr(tree, name, default)
  return default if value is None else value


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def sample_records(num: int, rng: np.random.Generator, demographics, hospital,
                   abnormal_fraction: float) -> dict[str, np.ndarray]:
  """Draws `num` patient records of one hospital.

  Args:
    num: number of patients (one image each).
    rng: the only source of randomness.
    demographics: `data_config.demographics` (a `Demographics`).
    hospital: one entry of `data_config.hospitals` (`age_bin_weights`, optional `ap_fraction`,
      `male_fraction`, `patient_id_offset`).
    abnormal_fraction: share of patients with at least one finding (exact, rounded).

  Returns:
    Arrays keyed by `RECORD_KEYS` plus 'patient_id'.
  """
  if not 0.0 <= abnormal_fraction <= 1.0:
    raise ValueError(f'abnormal_fraction must be in [0, 1], got {abnormal_fraction}.')
  d = demographics
  edges = np.asarray(d.age_bin_edges, np.float64)
  weights = np.asarray(d.age_bin_counts, np.float64) * np.asarray(
      _get(hospital, 'age_bin_weights', (1.0,) * (len(edges) - 1)), np.float64)
  if len(weights) != len(edges) - 1 or weights.min() < 0 or weights.sum() <= 0:
    raise ValueError(f'hospital {_get(hospital, "name")}: age_bin_weights must be {len(edges) - 1} '
                     f'non-negative numbers (one per demographics.age_bin_edges bin).')
  keep = edges[1:] <= d.age_max_valid  # Bins past the valid range hold entry errors.
  weights = np.where(keep, weights, 0.0)
  bins = rng.choice(len(weights), size=num, p=weights / weights.sum())
  age = edges[bins] + rng.random(num) * (edges[bins + 1] - edges[bins])
  sex = (rng.random(num) < _get(hospital, 'male_fraction', d.male_fraction)).astype(np.int64)
  view = (rng.random(num) < _get(hospital, 'ap_fraction', d.ap_fraction)).astype(np.int64)

  findings = np.zeros((num, len(FINDINGS)), np.int64)
  abnormal = np.zeros(num, bool)
  abnormal[rng.permutation(num)[:int(round(num * abnormal_fraction))]] = True
  mix = np.asarray(d.finding_weights, np.float64)
  primary = rng.choice(len(FINDINGS), size=int(abnormal.sum()), p=mix / mix.sum())
  extra = rng.random((int(abnormal.sum()), len(FINDINGS))) < d.finding_cooccurrence_probability
  findings[abnormal] = extra
  findings[np.flatnonzero(abnormal), primary] = 1

  decades = (age - d.history_reference_age) / 10.0
  smoker = rng.random(num) < d.smoker_probability
  copd = rng.random(num) < _sigmoid(d.copd_logit_intercept + d.copd_logit_per_decade * decades
                                    + d.copd_logit_smoker * smoker)
  device = rng.random(num) < _sigmoid(d.device_logit_intercept
                                      + d.device_logit_per_decade * decades)
  history = np.stack([copd, device, smoker], axis=1).astype(np.int64)
  bmi = np.clip(rng.normal(d.bmi_mean + d.bmi_per_decade * decades, d.bmi_std), d.bmi_min,
                d.bmi_max)

  pneumonia, _, effusion, cardiomegaly = findings.T
  median = np.where(pneumonia == 1, d.crp_median_pneumonia,
                    np.where(abnormal, d.crp_median_other_finding, d.crp_median_normal))
  crp = np.minimum(median * np.exp(d.crp_log_sigma * rng.standard_normal(num)), d.crp_max)
  crp[rng.random(num) < d.crp_missing_probability] = np.nan
  severity = (d.severity_baseline + findings @ np.asarray(d.severity_per_finding, np.float64)
              + d.severity_per_decade * decades + d.severity_noise_std * rng.standard_normal(num))
  diuretic = rng.random(num) < _sigmoid(
      d.diuretic_logit_intercept + d.diuretic_logit_effusion * effusion
      + d.diuretic_logit_cardiomegaly * cardiomegaly + d.diuretic_logit_per_decade * decades)
  return dict(
      age=age, sex=sex, view=view, history=history, bmi=bmi, crp=crp,
      severity_score=np.maximum(severity, 0.0), diuretic=diuretic[:, None].astype(np.int64),
      findings=findings,
      patient_id=int(_get(hospital, 'patient_id_offset', 0)) + np.arange(num, dtype=np.int64))


def _patient_geometry(records, anatomy: Anatomy, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Per-image drawing parameters (arrays of shape (N,)) from the records plus individual jitter."""
  a = anatomy
  age = np.asarray(records['age'], np.float64)
  n = len(age)
  male = np.asarray(records['sex']) == 1
  ap = np.asarray(records['view']) == 1
  copd = np.asarray(records['history'])[:, 0] == 1
  bmi_excess = np.asarray(records['bmi'], np.float64) - a.reference_bmi
  findings = np.asarray(records['findings'])
  growth = a.newborn_scale + (1 - a.newborn_scale) * np.clip(age / a.growth_age, 0, 1)
  jitter = lambda std: 1.0 + std * rng.standard_normal(n)
  g = {}
  g['width'] = (a.thorax_half_width * growth * np.where(male, 1.0, a.female_width_scale)
                * jitter(a.shape_jitter))
  lung_height = ((a.lung_height + a.lung_height_per_decade * (age - a.reference_age) / 10)
                 * growth * np.where(male, 1.0, a.female_height_scale) * jitter(a.shape_jitter))
  g['lung_height'] = lung_height * np.where(copd, a.copd_height_scale, 1.0)
  g['apex'] = a.lung_apex * growth + a.apex_jitter * rng.standard_normal(n)
  g['dome'] = a.dome_height * np.where(copd, a.copd_dome_scale, 1.0) * jitter(a.dome_jitter)
  g['air'] = a.lung_air + np.where(copd, a.copd_extra_air, 0.0)
  g['soft'] = a.soft_tissue + a.soft_tissue_per_bmi * bmi_excess
  g['fat'] = np.clip(a.fat_thickness + a.fat_per_bmi * bmi_excess, 0.01, 0.4)
  g['breast'] = np.where(male, 0.0, a.breast_density * np.clip(1 + bmi_excess / 10, 0.5, 2.0))
  ratio = np.where(findings[:, 3] == 1, a.cardiomegaly_ratio, a.cardiothoracic_ratio)
  g['heart_half_width'] = (ratio * np.where(ap, a.ap_magnification, 1.0) * g['width']
                           + a.ratio_jitter * g['width'] * rng.standard_normal(n))
  g['clavicle_lift'] = np.where(ap, a.ap_clavicle_lift, 0.0)
  bone = a.bone_density - a.bone_loss_per_decade * np.maximum(age - a.bone_loss_age, 0) / 10
  g['bone'] = np.maximum(bone + a.bone_jitter * rng.standard_normal(n), a.bone_min)
  g['shift_x'] = a.position_jitter * rng.standard_normal(n)
  g['shift_y'] = a.position_jitter * rng.standard_normal(n)
  g['texture'] = rng.normal(0, a.texture_frequency, (n, 4, 2))  # Lung markings' frequencies.
  g['texture_phase'] = rng.uniform(0, 2 * np.pi, (n, 4))
  return g


def _ramp(signed_distance, width):
  """Anti-aliased inside-indicator: 1 where signed_distance << 0, 0 where >> 0."""
  ramp = signed_distance * (-1.0 / width)
  ramp += 0.5
  return np.clip(ramp, 0.0, 1.0, out=ramp)


def _ellipse(x, y, cx, cy, rx, ry, edge):
  """Soft mask of an ellipse; (q^2 - 1) / 2 ~ q - 1 near the boundary, where the ramp acts."""
  q_squared = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
  return _ramp((q_squared - 1.0) * (0.5 * np.minimum(rx, ry)), edge)


def _draw_chunk(g: Mapping[str, np.ndarray], records, size: int, anatomy: Anatomy,
                rng: np.random.Generator) -> np.ndarray:
  """Attenuation maps (n, size, size) of one chunk: larger = denser = brighter on the film."""
  a = anatomy
  edge = a.edge_pixels * 2.0 / size
  p = {k: np.asarray(v, np.float32) for k, v in g.items()}
  p = {k: v[:, None, None] if v.ndim == 1 else v for k, v in p.items()}
  coords = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
  # Rows (n, 1, W) and columns (n, H, 1): most terms stay that small until combined.
  x, y = coords[None, None, :] - p['shift_x'], coords[None, :, None] - p['shift_y']
  ax = np.abs(x)
  width, height, apex = p['width'], p['lung_height'], p['apex']
  lung_cx, lung_rx = 0.5 * width, 0.47 * width
  diaphragm = apex + height
  lung_ry = 0.64 * height
  # Hemidiaphragm domes peak mid-hemithorax; the right (image left) sits a little higher.
  dome_x = np.clip((ax - 0.42 * width) / (0.55 * width), -1, 1)
  domes = diaphragm - p['dome'] * (1 - dome_x ** 2) - np.float32(0.03) * (x < 0)
  below_domes = _ramp(domes - y, edge)

  # Body: torso of the thorax width plus fat, sloping shoulders, and the neck above.
  # The chest wall bulges a little at mid-height; axillae are narrower.
  body_half_width = width + 0.07 + p['fat'] - 0.12 * ((y - apex) / height - 0.7) ** 2
  shoulders = apex - 0.22 + 0.45 * (ax / (width + p['fat'])) ** 2
  torso = _ramp(ax - body_half_width, edge) * _ramp(shoulders - y, 3 * edge)
  body = np.maximum(torso, _ramp(ax - 0.3 * width, edge))
  density = body * (p['soft'] + a.abdomen_density * below_domes)
  density += p['breast'] * _ellipse(ax, y, 0.62 * width, diaphragm - 0.1, 0.4 * width,
                                    0.3 * height, 4 * edge)

  lungs = (_ellipse(ax, y, lung_cx, apex + lung_ry, lung_rx, lung_ry, edge)
           * (1 - below_domes) * _ramp(0.08 * width - ax, edge))
  heart = _ellipse(x, y, 0.15 * width, diaphragm - 0.2 * height, p['heart_half_width'],
                   0.24 * height, edge)
  # Superior mediastinum widens toward the heart; the trachea is an air column down to the carina.
  mediastinum_half_width = (0.09 + 0.06 * np.clip((y - apex) / height, 0, 1)) * width
  mediastinum = _ramp(ax - mediastinum_half_width, 2 * edge) * _ramp(y - diaphragm, edge) * body
  trachea = _ramp(ax - 0.035, edge) * _ramp(y - apex - 0.33 * height, 2 * edge)
  density += (a.mediastinum_density * mediastinum
              + a.heart_density * heart * (1 - below_domes) - a.trachea_air * trachea)
  hilum = np.exp(-(ax - 0.22 * width) ** 2 / 0.02) * np.exp(-(y - apex - 0.45 * height) ** 2 / 0.02)
  # Lung markings: plane waves, cos(a + b) expanded so that only row and column vectors go
  # through the trigonometric functions.
  along_x = p['texture'][:, :, 0, None] * x[:, 0][:, None, :]  # (n, waves, W)
  along_y = p['texture'][:, :, 1, None] * y[:, :, 0][:, None, :] + p['texture_phase'][..., None]
  texture = np.matmul(np.concatenate([np.cos(along_y), -np.sin(along_y)], 1).transpose(0, 2, 1),
                      np.concatenate([np.cos(along_x), np.sin(along_x)], 1))
  markings = a.hilum_density * hilum + a.texture_amplitude * texture
  air = p['air'] * (1 - 0.8 * np.maximum(heart, mediastinum))
  fluid = _effusion(records, x, y, p, edge, a, rng)
  density += lungs * (markings - air * (1 - fluid) + a.effusion_density * fluid)

  # Bones: posterior ribs arc down laterally from the spine; anterior ribs fainter, opposite slope.
  rel = ax / width
  cage = _ellipse(ax, y, 0.0, apex + 0.55 * height, 1.02 * width, 0.62 * height, edge)
  cage *= _ramp(y - diaphragm - 0.05, edge)
  spacing = height / a.ribs_per_lung
  rib_soft = edge / spacing
  posterior = (y - apex + 0.05 - 0.55 * height * (rel - 0.25) ** 2) / spacing
  anterior = (y - apex - 0.1 + 0.3 * height * rel) / (1.3 * spacing)
  # Below ~4 pixels per rib period the bands alias into moire: fade them to their mean density.
  visible = np.clip((spacing * size / 2 - 2.5) / 1.5, 0, 1)
  band = lambda phase: visible * _ramp(np.abs(phase - np.floor(phase) - 0.5) - a.rib_fraction / 2,
                                       rib_soft) + (1 - visible) * a.rib_fraction
  open_lung = lungs * (1 - np.maximum(heart, mediastinum))
  ribs = cage * (0.3 + 0.7 * open_lung) * (band(posterior) + 0.4 * band(anterior))
  clavicle_y = apex + 0.24 - p['clavicle_lift'] * (1 + ax) - 0.3 * ax + 0.1 * ax ** 2
  clavicles = (_ramp(np.abs(y - clavicle_y) - 0.035, edge) * _ramp(0.07 - ax, edge)
               * _ramp(ax - 0.95 * width, edge))
  vertebrae = body * _ramp(ax - 0.06, edge) * (0.8 + 0.2 * np.cos(2 * np.pi * y / (0.8 * spacing)))
  density += p['bone'] * (ribs + a.clavicle_weight * clavicles + 0.3 * vertebrae)
  gastric_bubble = _ellipse(x, y, 0.45 * width, diaphragm + 0.12, 0.12, 0.07, edge) * below_domes
  density -= 0.2 * gastric_bubble * body
  density = _add_findings(density, records, x, y, p, lungs, edge, a, rng)
  return _add_device(density, records, x, y, p, edge, a)


def _effusion(records, x, y, p, edge, a: Anatomy, rng) -> np.ndarray:
  """Fluid fraction (0..1) replacing lung air: a level at the base, higher laterally."""
  n = x.shape[0]
  has = np.asarray(records['findings'])[:, 2] == 1
  level = rng.uniform(*a.effusion_level, n)
  sides = rng.choice(3, n, p=a.effusion_sides)  # Right (image left), left or both.
  fluid = np.zeros((n,) + np.broadcast_shapes(x.shape, y.shape)[1:], np.float32)
  idx = np.flatnonzero(has)
  if idx.size == 0:
    return fluid
  width, height = p['width'][idx], p['lung_height'][idx]
  top = p['apex'][idx] + height * (1 - level[idx, None, None])
  xi = x[idx] if x.shape[0] == n else x
  yi = y[idx] if y.shape[0] == n else y
  meniscus = top - 0.25 * height * np.clip(np.abs(xi) / width - 0.5, 0, 1)
  side_ok = np.where(xi < 0, sides[idx, None, None] != 1, sides[idx, None, None] != 0)
  fluid[idx] = _ramp(meniscus - yi, edge) * side_ok
  return fluid


def _add_findings(density, records, x, y, p, lungs, edge, a: Anatomy, rng) -> np.ndarray:
  """Pneumonia-like patchy opacities and nodules, confined to the lung fields."""
  n = density.shape[0]
  findings = np.asarray(records['findings'])
  # Draw every random number for every image so results do not depend on who is abnormal.
  zone = rng.choice(3, n)
  side = rng.choice((-1.0, 1.0), n)
  radius = rng.uniform(*a.pneumonia_radius, n)
  patch_freq = rng.normal(0, a.pneumonia_patchiness, (n, 3, 2))
  patch_phase = rng.uniform(0, 2 * np.pi, (n, 3))
  nodule_count = rng.integers(1, a.max_nodules + 1, n)
  nodule_xy = rng.uniform((0.3, 0.2), (0.75, 0.85), (n, a.max_nodules, 2))
  nodule_side = rng.choice((-1.0, 1.0), (n, a.max_nodules))
  nodule_r = rng.uniform(*a.nodule_radius, (n, a.max_nodules))
  width, height, apex = p['width'][:, 0, 0], p['lung_height'][:, 0, 0], p['apex'][:, 0, 0]
  for i in np.flatnonzero(findings[:, 0] == 1):
    cx = side[i] * 0.52 * width[i]
    cy = apex[i] + height[i] * (0.3, 0.55, 0.78)[zone[i]]
    envelope = np.clip(1 - ((x[i] - cx) ** 2 + (y[i] - cy) ** 2) / radius[i] ** 2, 0, 1)
    patches = sum(np.cos(patch_freq[i, k, 0] * x[i] + patch_freq[i, k, 1] * y[i]
                         + patch_phase[i, k]) for k in range(3))
    density[i] += a.pneumonia_density * lungs[i] * envelope * np.clip(0.7 + 0.2 * patches, 0, 1)
  for i in np.flatnonzero(findings[:, 1] == 1):
    for k in range(nodule_count[i]):
      cx = nodule_side[i, k] * nodule_xy[i, k, 0] * width[i]
      cy = apex[i] + nodule_xy[i, k, 1] * height[i]
      spot = _ellipse(x[i], y[i], cx, cy, nodule_r[i, k], nodule_r[i, k], edge)
      density[i] += a.nodule_density * spot * np.maximum(lungs[i], 0.5)
  return density


def _add_device(density, records, x, y, p, edge, a: Anatomy) -> np.ndarray:
  """Pacemaker generator below the left clavicle (image right) with a lead down into the heart."""
  for i in np.flatnonzero(np.asarray(records['history'])[:, 1] == 1):
    width, apex, height = p['width'][i, 0, 0], p['apex'][i, 0, 0], p['lung_height'][i, 0, 0]
    gx, gy = 0.62 * width, apex + 0.22
    box = _ramp(np.abs(x[i] - gx) - 0.075, edge) * _ramp(np.abs(y[i] - gy) - 0.05, edge)
    # The lead leaves the generator medially and turns down into the right ventricle:
    # x = end_x + (gx - end_x) * (1 - s)^2 with s running from 0 (generator) to 1 (tip) along y.
    end_x, end_y = 0.05 * width, apex + 0.8 * height
    s = np.clip((y[i] - gy) / (end_y - gy), 0, 1)
    lead_x = end_x + (gx - end_x) * (1 - s) ** 2
    slope = 2 * (gx - end_x) * (1 - s) / (end_y - gy)
    distance = np.abs(x[i] - lead_x) / np.sqrt(1 + slope ** 2)
    lead = _ramp(distance - 0.012, edge) * _ramp(gy - y[i], edge) * _ramp(y[i] - end_y, edge)
    density[i] += a.device_density * np.maximum(box, 0.6 * lead)
  return density


def render(records, image_size: int, hospital, rng: np.random.Generator,
           anatomy: Mapping[str, Any] | None = None, chunk_pixels: int = 2**18) -> np.ndarray:
  """Draws one radiograph per record as seen by `hospital`'s scanner.

  Args:
    records: from `sample_records` (only `RECORD_KEYS` are read; ages must be known, a missing
      sex or view code (-1) draws as F or PA).
    image_size: height = width in pixels (28..256 tested).
    hospital: `window_low`, `window_high`, `gamma`, `noise_std`, `blur_sigma` (fraction of width).
    rng: the only source of randomness.
    anatomy: overrides of `Anatomy` fields by name (`data_config.anatomy`).
    chunk_pixels: pixels drawn per vectorized step; results depend on it (it orders the draws).

  Returns:
    uint8 `(N, image_size, image_size, 1)`.
  """
  if not 16 <= image_size <= 1024:
    raise ValueError(f'image_size must be in [16, 1024], got {image_size}.')
  fields = {f.name for f in dataclasses.fields(Anatomy)}
  overrides = dict(anatomy or {})
  if set(overrides) - fields:
    raise ValueError(f'data_config.anatomy: unknown fields {sorted(set(overrides) - fields)}; '
                     f'expected some of {sorted(fields)}.')
  anatomy_values = Anatomy(**overrides)
  style = {}
  for name in ('window_low', 'window_high', 'gamma', 'noise_std'):
    style[name] = _get(hospital, name)
    if style[name] is None:
      raise ValueError(f'hospital {_get(hospital, "name")!r}: missing {name!r} (see '
                       'configs/data/phantom.py for the fields a hospital style needs).')
  low, high = float(style['window_low']), float(style['window_high'])
  if high <= low:
    raise ValueError(f'hospital {_get(hospital, "name")!r}: window_high must exceed window_low.')
  blur = float(_get(hospital, 'blur_sigma', 0.0)) * image_size
  n = len(records['age'])
  if not np.isfinite(np.asarray(records['age'], np.float64)).all():
    raise ValueError('records["age"]: phantoms need every age (years); got missing values.')
  geometry = _patient_geometry(records, anatomy_values, rng)
  images = np.empty((n, image_size, image_size, 1), np.uint8)
  chunk = max(1, chunk_pixels // (image_size * image_size))
  for start in range(0, n, chunk):
    part = slice(start, min(start + chunk, n))
    chunk_records = {k: np.asarray(records[k])[part] for k in RECORD_KEYS}
    density = _draw_chunk({k: v[part] for k, v in geometry.items()}, chunk_records, image_size,
                          anatomy_values, rng)
    film = density
    film -= low
    film *= 1.0 / (high - low)
    np.clip(film, 0.0, 1.0, out=film)
    if float(style['gamma']) != 1.0:
      np.power(film, float(style['gamma']), out=film)
    if blur > 0:
      film = ndimage.gaussian_filter(film, sigma=(0, blur, blur), mode='nearest')
    film += float(style['noise_std']) * rng.standard_normal(film.shape, dtype=np.float32)
    images[part, :, :, 0] = np.clip(film * 255.0 + 0.5, 0, 255).astype(np.uint8)
  return images


class ConditionPrior:
  """Condition vectors drawn from the federation's configured population: public numbers only.

  Hospitals are picked in proportion to their configured sizes (or one is named) and each
  draws records from its own age mix and view ratio, with findings at `abnormal_fraction`;
  stored records are never reused, so a draw reveals nothing about any patient.
  """

  def __init__(self, schema: conditions_lib.ConditionSchema, demographics,
               hospitals: list[dict], weights: np.ndarray, abnormal_fraction: float):
    self.schema, self.demographics, self.hospitals = schema, demographics, hospitals
    self.weights = np.asarray(weights, np.float64) / np.sum(weights)
    self.abnormal_fraction = float(abnormal_fraction)

  def __call__(self, rng: np.random.Generator, n: int,
               client_index: int | None = None) -> np.ndarray:
    """`(n, model_dim)` conditions of hospital `client_index`, or of the whole population."""
    if client_index is None:
      counts = rng.multinomial(n, self.weights)
    else:
      if not 0 <= client_index < len(self.hospitals):
        raise IndexError(f'condition prior: hospital {client_index} out of range for '
                         f'{len(self.hospitals)} hospitals.')
      counts = np.zeros(len(self.hospitals), np.int64)
      counts[client_index] = n
    parts = [sample_records(int(c), rng, self.demographics, h, self.abnormal_fraction)
             for c, h in zip(counts, self.hospitals) if c]
    records = {k: np.concatenate([p[k] for p in parts]) for k in RECORD_KEYS}
    values, mask = self.schema.encode(records)
    return conditions_lib.model_condition(values, mask)[rng.permutation(n)]


class NormalProfiles(ConditionPrior):
  """Condition vectors of normal patients drawn from the federation's configured population."""

  def __init__(self, schema, demographics, hospitals, weights):
    super().__init__(schema, demographics, hospitals, weights, abnormal_fraction=0.0)

  def __call__(self, rng: np.random.Generator, n: int) -> np.ndarray:  # pylint: disable=arguments-differ
    return super().__call__(rng, n)


def _as_dict(tree) -> dict:
  if dataclasses.is_dataclass(tree):
    return dataclasses.asdict(tree)
  return tree.to_dict() if hasattr(tree, 'to_dict') else dict(tree)


def _check_schema(schema: conditions_lib.ConditionSchema) -> None:
  for feature in schema.features:
    if feature.name not in RECORD_KEYS:
      raise ValueError(f'conditions.{feature.name}: phantom records only provide {RECORD_KEYS}.')
    expected = _CATEGORIES.get(feature.name)
    if expected is not None and tuple(feature.categories) != expected:
      raise ValueError(f'conditions.{feature.name}: phantom codes need categories {expected} in '
                       f'this order, got {feature.categories}.')


def _client(name, images, records, schema) -> dataset_lib.ClientData:
  values, mask = schema.encode(records)
  return dataset_lib.ClientData(
      name=name, images=images, conditions=conditions_lib.model_condition(values, mask),
      abnormal=np.asarray(records['findings']).any(axis=1), patient_ids=records['patient_id'],
      records={k: records[k] for k in RECORD_KEYS})


def build_federation(data_config, conditions_config, seed: int) -> dataset_lib.FederatedDataset:
  """Hospitals' phantom training sets, a test split and the schema encoding them.

  Args:
    data_config: `configs/data/phantom.py:get_data_config()`. With more `num_hospitals` than
      listed styles, styles repeat (names get a suffix) with disjoint patients.
    conditions_config: the schema list (`get_conditions()`); unset mean/std of continuous
      features are fitted on the pooled training records.
    seed: fixes everything. Records, images and the test split use separate streams.
  """
  schema = conditions_lib.ConditionSchema.from_config(conditions_config)
  _check_schema(schema)
  styles = [_as_dict(h) for h in data_config.hospitals]
  num_hospitals = int(data_config.num_hospitals)
  if num_hospitals < 1 or not styles:
    raise ValueError(f'data_config.num_hospitals must be >= 1 with data_config.hospitals listing '
                     f'at least one style; got {num_hospitals} and {len(styles)} styles.')
  stride = int(data_config.demographics.patient_id_stride)
  hospitals = []
  for i in range(num_hospitals):
    site = dict(styles[i % len(styles)], patient_id_offset=(i + 1) * stride)
    if i >= len(styles):
      site['name'] = f'{site["name"]}_{i // len(styles)}'
    if not 0 < int(site['examples']) <= stride:
      raise ValueError(f'data_config.hospitals[{i % len(styles)}].examples must be in '
                       f'[1, demographics.patient_id_stride={stride}], got {site["examples"]}.')
    hospitals.append(site)
  size, demographics = int(data_config.image_size), data_config.demographics
  render_options = dict(anatomy=_as_dict(data_config.anatomy),
                        chunk_pixels=int(data_config.render_chunk_pixels))
  parts = []
  for i, site in enumerate(hospitals):
    records = sample_records(int(site['examples']), np.random.default_rng([seed, 0, i]),
                             demographics, site, float(data_config.abnormal_fraction))
    images = render(records, size, site, np.random.default_rng([seed, 1, i]), **render_options)
    parts.append((site['name'], images, records))
  test_images, test_records = _test_split(data_config, hospitals, seed, render_options)

  pooled = {k: np.concatenate([p[2][k] for p in parts]) for k in RECORD_KEYS}
  schema = schema.fit_standardization(pooled)
  clients = [_client(name, images, records, schema) for name, images, records in parts]
  test = _client('test', test_images, test_records, schema)
  weights = np.array([float(h['examples']) for h in hospitals])
  return dataset_lib.FederatedDataset(
      schema=schema, clients=clients, test=test,
      normal_profiles=NormalProfiles(schema, demographics, hospitals, weights),
      condition_prior=ConditionPrior(schema, demographics, hospitals, weights,
                                     float(data_config.abnormal_fraction)),
      info=dict(source='phantom', image_size=size, seed=seed,
                hospitals=[h['name'] for h in hospitals], test_style=data_config.test_style))


def _test_split(data_config, hospitals, seed, render_options):
  """Test patients (ids from 0) from their own seed stream, in the configured style."""
  num = int(data_config.test_examples)
  if not 0 < num <= int(data_config.demographics.patient_id_stride):
    raise ValueError(f'data_config.test_examples must be in [1, demographics.patient_id_stride], got {num}.')
  rng = np.random.default_rng([seed, 2])
  if data_config.test_style == 'neutral':
    styles, counts = [_as_dict(data_config.test_hospital)], [num]
  elif data_config.test_style == 'mixed':
    weights = np.array([float(h['examples']) for h in hospitals])
    styles, counts = hospitals, rng.multinomial(num, weights / weights.sum())
  else:
    raise ValueError(f"data_config.test_style must be 'mixed' or 'neutral', got "
                     f'{data_config.test_style!r}.')
  # Split the abnormal total over the parts by largest remainder, so the split holds exactly
  # round(num * test_abnormal_fraction) abnormal patients.
  counts = np.asarray(counts, np.int64)
  quota = counts * float(data_config.test_abnormal_fraction)
  abnormal = np.floor(quota).astype(np.int64)
  remainder_order = np.argsort(-(quota - abnormal), kind='stable')
  abnormal[remainder_order[:int(round(quota.sum())) - abnormal.sum()]] += 1
  images, records, offset = [], [], 0
  for style, count, count_abnormal in zip(styles, counts, abnormal):
    site = dict(style, patient_id_offset=offset)
    part = sample_records(int(count), rng, data_config.demographics, site,
                          count_abnormal / count if count else 0.0)
    images.append(render(part, int(data_config.image_size), site, rng, **render_options))
    records.append(part)
    offset += int(count)
  order = rng.permutation(num)
  merged = {k: np.concatenate([r[k] for r in records])[order] for k in records[0]}
  return np.concatenate(images)[order], merged
