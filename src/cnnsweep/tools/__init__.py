"""Tools that read what runs and sweeps wrote: reports and plots, checkpoint evaluation, benchmarks.

Each is a command (`python -m cnnsweep.report`, `cnnsweep.evaluate`, `cnnsweep.bench`,
`cnnsweep.runbench`, `cnnsweep.stats`) over run and sweep folders; none changes them. `cnnsweep.noise_sim`
reads none: it simulates sweeps to measure how well single seeds, repeats and confirmation choose under noise.
"""
