"""Training: one configured run, from its composed config to its run folder.

    YAML config -> instantiate (model, data, augmentation, optimizer, scheduler, trainer)
                -> Trainer.fit, one epoch at a time -> run folder (metrics.csv, summary.json, checkpoints/)

`run.train(cfg, run_dir, ...)` is the entry point (train.py calls it; so does every sweep's job).
This package knows nothing of sweeps: a sweep's job hands it an optional `reporter` (an object with
`report(epoch, value, last)`) and gets the run's objective back.
"""
