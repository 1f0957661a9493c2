"""How fast, how long: the benchmark and the run-time estimate.

- :mod:`.bench` (``ablate bench``): the trainer's images/s against a conventional DataLoader pipeline,
  co-located trials, fused runs and torch.compile, on one device;
- :mod:`.estimate` (half of ``ablate plan``, and ``ablate run``'s confirmation): a study's wall time from
  its FLOPs and a rate calibrated on this device.

Nothing is imported here: ``ablate plan`` needs the estimate without the benchmark's DataLoader.
"""
