"""Evaluation: one driver for the main job's last step and the eval binary.

`driver.py` restores G (or takes it from training), builds the federation and runs the
evaluators named in `config.eval.evaluators`; `report.py` writes `eval/results.{json,md}`;
`context.py` computes once what several evaluators share; the rest are the evaluators
(`anomaly.py` is the F-AD detector, `fid.py`/`sample_quality.py` image quality,
`schema_attributes.py` conditioning fidelity, `memorization.py`, `personalized.py`).
"""
