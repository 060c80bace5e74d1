"""Training deep engines: recipes, targets, samples, augmentation and the loop (:mod:`.training`);
``hts train`` (:mod:`hts.tasks.train`) is the one command that drives it.
"""
