"""Data config of the embedded default data: procedural chest-radiograph phantoms.

Every number that shapes the phantom federation lives here: the demographic
distribution (measured once from real ChestX-ray14 metadata, see below), how the
clinical record depends on findings, the hospitals' patient mix and scanner style,
and the split sizes. Geometry and effect sizes of the drawing are fields of
`fedgan_jax.data.phantom.Anatomy`; `config.anatomy` overrides any of them by name.
The demographics (`DEMOGRAPHICS`) and each hospital (`_hospital`) are typed presets
(`phantom.Demographics`, `phantom.Site`): one config leaf each, since they describe the
simulated world rather than the experiment, with every number still written here and any
one overridable by name, e.g. `--config.data.demographics.smoker_probability=0.3` or
`--config.data.test_hospital.noise_std=0.02`.

Used by an experiment config as
  config.data = phantom.get_data_config(runlocal)
  config.conditions = phantom.get_conditions()
and built with `fedgan_jax.data.phantom.build_federation(config.data, config.conditions, seed)`.
"""

import ml_collections

from fedgan_jax.data import phantom as phantom_lib

# Demographics measured ONCE by hand from /work/shared/data/cxr14/Data_Entry_2017_rows1-40000.csv
# (ChestX-ray14 metadata, rows 1-40000, counted per image, 40,000 images): `Patient Age`
# histogram in 10-year bins [0,10) ... [90,100) after dropping ages > 120 (known entry errors;
# none in these rows), mean 47.2 and std 16.3 years; `Patient Gender` M 21,777 / F 18,223;
# `View Position` PA 24,089 / AP 15,911. The library never reads that file.
CXR14_AGE_BIN_EDGES = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100)
CXR14_AGE_BIN_COUNTS = (391, 2130, 3679, 5929, 8566, 10127, 6263, 2412, 479, 24)
CXR14_AGE_MEAN = 47.2
CXR14_AGE_STD = 16.3
CXR14_MALE_FRACTION = 21777 / 40000
CXR14_AP_FRACTION = 15911 / 40000


# World presets: how the phantom population is drawn (`fedgan_jax.data.phantom.Demographics`).
# Not experiment knobs: `data.demographics` holds one preset as a single typed leaf, built
# fresh by `demographics(name)`; `--config.data.demographics.<field>=...` overrides one number.
DEMOGRAPHICS = {
    'cxr14_2017': dict(
        age_bin_edges=CXR14_AGE_BIN_EDGES,
        age_bin_counts=CXR14_AGE_BIN_COUNTS,
        age_max_valid=120.0,  # Ages above are entry errors in the source metadata.
        patient_id_stride=1_000_000,
        male_fraction=CXR14_MALE_FRACTION,
        ap_fraction=CXR14_AP_FRACTION,
        # History: P(smoker); COPD and cardiac devices follow logistic models in age decades
        # past 50.
        smoker_probability=0.22,
        copd_logit_intercept=-2.6,
        copd_logit_per_decade=0.35,
        copd_logit_smoker=1.6,
        device_logit_intercept=-3.4,
        device_logit_per_decade=0.55,
        history_reference_age=50.0,
        # BMI (kg/m^2): normal around a mean that drifts with age, clipped to a plausible range.
        bmi_mean=27.0,
        bmi_std=5.0,
        bmi_per_decade=0.4,
        bmi_min=15.0,
        bmi_max=50.0,
        # CRP (mg/L): log-normal around a median that depends on the findings; sometimes not
        # measured.
        crp_median_normal=3.0,
        crp_median_pneumonia=70.0,
        crp_median_other_finding=10.0,
        crp_log_sigma=0.7,
        crp_max=300.0,
        crp_missing_probability=0.25,
        # Severity score: baseline + per-finding increments (order of `findings`) + age + noise,
        # >= 0.
        severity_baseline=1.0,
        severity_per_finding=(3.0, 0.8, 2.0, 1.5),
        severity_per_decade=0.15,
        severity_noise_std=0.6,
        # Diuretics: logistic in effusion, cardiomegaly and age decades past 50.
        diuretic_logit_intercept=-3.0,
        diuretic_logit_effusion=2.2,
        diuretic_logit_cardiomegaly=2.4,
        diuretic_logit_per_decade=0.3,
        # Findings of abnormal patients: the primary finding is drawn with these weights (order
        # of `findings`), each other finding co-occurs with this probability.
        finding_weights=(0.4, 0.2, 0.2, 0.2),
        finding_cooccurrence_probability=0.1),
}


def demographics(name: str = 'cxr14_2017') -> phantom_lib.Demographics:
  """A fresh copy of preset `name` (shared by all hospitals unless a hospital overrides)."""
  if name not in DEMOGRAPHICS:
    raise ValueError(f'configs/data/phantom.py: no demographics preset {name!r}; choose one of '
                     f'{sorted(DEMOGRAPHICS)}.')
  return phantom_lib.Demographics(**DEMOGRAPHICS[name])


def _hospital(name, examples, age_bin_weights, window_low, window_high, gamma, noise_std,
              blur_sigma, ap_fraction=CXR14_AP_FRACTION) -> phantom_lib.Site:
  """One site: its patient mix and its scanner's look (fields: `phantom_lib.Site`)."""
  return phantom_lib.Site(
      name=name, examples=examples, age_bin_weights=tuple(age_bin_weights),
      window_low=window_low, window_high=window_high, gamma=gamma, noise_std=noise_std,
      blur_sigma=blur_sigma, ap_fraction=ap_fraction)


def get_data_config(runlocal: bool = False) -> ml_collections.ConfigDict:
  """Phantom federation: 4 unequal, non-IID hospitals and a half-abnormal test split.

  Args:
    runlocal: shrink everything (3 hospitals x 64 images at 32x32, 64 test images) for tests.
  """
  config = ml_collections.ConfigDict()
  config.name = 'phantom'
  config.image_size = 64
  config.num_hospitals = 4
  config.abnormal_fraction = 0.2  # Of each hospital's training images.
  config.test_examples = 1000
  config.test_abnormal_fraction = 0.5
  # 'mixed': test patients come from every hospital's population and scanner, in proportion to
  # their sizes; 'neutral': all from `test_hospital`.
  config.test_style = 'mixed'
  # Patient ids of hospital i start at (i + 1) * stride (the test split at 0), so never collide.
  config.render_chunk_pixels = 2**18  # Pixels rendered per vectorized step: bounds memory.
  config.demographics = demographics('cxr14_2017')
  flat = (1,) * 10
  config.hospitals = [
      _hospital('general', 1200, flat, window_low=0.0, window_high=1.0, gamma=1.0,
                noise_std=0.012, blur_sigma=0.0),
      _hospital('children_and_young', 600, (6, 4, 2.5, 1.5, 1, 0.7, 0.5, 0.3, 0.2, 0.2),
                window_low=-0.05, window_high=0.95, gamma=0.8, noise_std=0.02, blur_sigma=0.0),
      _hospital('geriatric', 900, (0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.2, 3.5, 4, 4),
                window_low=0.05, window_high=1.05, gamma=1.3, noise_std=0.008,
                blur_sigma=0.01),
      _hospital('intensive_care', 750, flat, window_low=0.0, window_high=1.1, gamma=1.1,
                noise_std=0.015, blur_sigma=0.006, ap_fraction=0.8),
  ]
  config.test_hospital = _hospital('test_neutral', 0, flat, window_low=0.0, window_high=1.0,
                                   gamma=1.0, noise_std=0.012, blur_sigma=0.0)
  config.anatomy = ml_collections.ConfigDict()  # Overrides of `phantom.Anatomy` fields.

  if runlocal:
    config.image_size = 32
    config.num_hospitals = 3
    for hospital, examples in zip(config.hospitals, (80, 48, 64, 56)):
      hospital.examples = examples
    config.test_examples = 64
  return config


def get_conditions() -> list[dict]:
  """The condition schema (order = layout of the condition vector).

  Means/stds of continuous features are declared so that every client encodes identically
  without sharing data: age from ChestX-ray14 (above); bmi, crp and severity_score measured on
  200,000 records drawn from the default demographics with abnormal fraction 0.2
  (see tests/phantom_test.py::test_declared_standardization_matches_default_population).
  """
  return [
      dict(name='age', kind='continuous', group='PD', mean=CXR14_AGE_MEAN, std=CXR14_AGE_STD),
      dict(name='sex', kind='categorical', group='PD', categories=('F', 'M')),
      dict(name='view', kind='categorical', group='PD', categories=('PA', 'AP')),
      dict(name='history', kind='multi_hot', group='PD',
           categories=('copd', 'cardiac_device', 'smoker')),
      dict(name='bmi', kind='continuous', group='CD', mean=27.0, std=5.0),
      dict(name='crp', kind='continuous', group='CD', mean=12.4, std=30.5),
      dict(name='severity_score', kind='continuous', group='CD', mean=1.5, std=1.3),
      dict(name='diuretic', kind='multi_hot', group='CD', categories=('diuretic',)),
      dict(name='findings', kind='multi_hot', group='PD',
           categories=('pneumonia', 'nodule', 'effusion', 'cardiomegaly')),
  ]
