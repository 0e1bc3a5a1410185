"""Tools that read what runs and sweeps wrote: reports and plots, checkpoint evaluation, benchmarks.

Each is a command (`cnnsweep report`, `cnnsweep evaluate`, `cnnsweep bench`, `cnnsweep runbench`,
`cnnsweep stats`, `cnnsweep confirm`: cnnsweep.command) over run and sweep folders; none changes them but
confirm, which adds the sweep's confirmation runs. `cnnsweep noise_sim` reads none: it simulates sweeps
to measure how well single seeds, repeats and confirmation choose under noise.
"""
