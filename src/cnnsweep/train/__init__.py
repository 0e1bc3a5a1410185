"""Training: one configured run, from its composed config to its run folder.

    YAML config -> instantiate (model, data, augmentation, optimizer, scheduler, trainer)
                -> for each epoch: train, evaluate, record -> run folder (its files: cnnsweep.files)

`run.train(cfg, run_dir, ...)` is the entry point (train.py calls it; so does every sweep's job) and reads
as the run's story, top to bottom; `loop` holds the steps and evaluation passes it calls, and the
Trainer's speed settings. This package knows nothing of sweeps: a sweep's job hands it an optional
`reporter` (an object with `report(epoch, value, last)`) and gets the run's objective back.
"""
