"""What the training stages share: the run's set-up (:mod:`~mtl.training.run`), exact resume
(:mod:`~mtl.training.resume`) and the epoch loop (:mod:`~mtl.training.loop`)."""
