"""Prediction on new data with a trained model: ``python -m unet.predict``.

Modules: :mod:`.io` (finding, reading and writing files), :mod:`.transforms` (the training
input transform per dataset, forward and inverse), :mod:`.sliding` (sliding window with
Gaussian blending), :mod:`.cases` (one input made ready for the model) and :mod:`.cli`
(the command).
"""
