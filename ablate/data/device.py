"""A split held on the device as uint8, served as augmented, normalised float32 batches.

Like airbench's loader: the whole split is copied to the device once and every batch is cut out of
it there with tensor ops, so a training step never waits on a CPU data pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["DeviceData"]

Batch = tuple[torch.Tensor, torch.Tensor]


class DeviceData:
    """One split resident on ``device``: images zero-padded by ``pad`` pixels, uint8, NHWC.

    Augmentation (He et al. 2015, sec. 4.2): pad 4 pixels on each side with zeros, take a random
    H x W crop, flip it horizontally with probability 1/2. Evaluation uses the original image.

    Per batch, in this order: gather each image's crop window (columns reversed where flipped) from
    the padded uint8 images with one advanced-indexing op -> (B, H, W, C), which is an NCHW tensor in
    channels_last memory format (copied to contiguous NCHW unless ``channels_last``) -> float32 ->
    subtract ``255 * mean`` -> multiply by ``1 / (255 * std)``. Each float op rounds once, so CPU and
    CUDA give the same bits. ``mean`` is per channel (C,) or per pixel (C, H, W); a per-pixel mean is
    subtracted at the output position of the crop (the network sees ``crop - mean image``).

    >>> data = DeviceData(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.arange(10),
    ...                   mean=[0.5] * 3, std=[0.25] * 3, device="cpu")
    >>> [tuple(x.shape) for x, _ in data.train_batches(4, torch.Generator().manual_seed(0))]
    [(4, 3, 8, 8), (4, 3, 8, 8)]
    """

    def __init__(
        self,
        x_uint8: torch.Tensor,
        y: torch.Tensor,
        *,
        mean: torch.Tensor | Sequence[float],
        std: torch.Tensor | Sequence[float],
        device: torch.device | str,
        channels_last: bool = False,
        pad: int = 4,
    ):
        if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4:
            raise ValueError(f"x_uint8 must be uint8 images (N, C, H, W), got {x_uint8.dtype} {tuple(x_uint8.shape)}")
        if y.shape != (len(x_uint8),):
            raise ValueError(f"y must hold one label per image ({len(x_uint8)}), got shape {tuple(y.shape)}")
        if pad < 0:
            raise ValueError(f"pad must be >= 0 pixels, got {pad}")
        n, channels, height, width = x_uint8.shape
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        per_pixel = mean.shape == (channels, height, width)
        mean = mean if per_pixel else mean.flatten()
        if (not per_pixel and mean.shape != (channels,)) or std.shape != (channels,) or not bool((std > 0).all()):
            raise ValueError(
                f"mean needs one value per channel ({channels}) or per pixel {(channels, height, width)}, std one "
                f"value per channel, std > 0; got mean of shape {tuple(mean.shape)}, std {std}"
            )
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.pad = pad
        self.image_shape = (channels, height, width)
        self.x = torch.zeros((n, height + 2 * pad, width + 2 * pad, channels), dtype=torch.uint8, device=self.device)
        self.x[:, pad : pad + height, pad : pad + width] = x_uint8.to(self.device).permute(0, 2, 3, 1)
        self.y = y.to(self.device, torch.int64)
        # normalisation constants, computed once on the CPU so every device uses the same values
        self._shift = (255 * mean).view(1, channels, *(mean.shape[1:] if per_pixel else (1, 1))).to(self.device)
        self._scale = (1 / (255 * std)).view(1, channels, 1, 1).to(self.device)
        self._rows = torch.arange(height, device=self.device)
        self._cols = torch.arange(width, device=self.device)

    def __len__(self) -> int:
        return len(self.y)

    def batches_per_epoch(self, batch_size: int) -> int:
        """Full batches in one epoch (the last partial batch is dropped)."""
        if not 1 <= batch_size <= len(self):
            raise ValueError(
                f"batch_size must be between 1 and the split's {len(self)} images (drop_last leaves no batch "
                f"otherwise), got {batch_size}; lower trainer.batch_size or use more data"
            )
        return len(self) // batch_size

    def train_batches(self, batch_size: int, generator: torch.Generator, *, augment: bool = True) -> Iterator[Batch]:
        """One epoch of shuffled (and augmented) batches; the last partial batch is dropped.

        All random numbers of the epoch are drawn here, at call time, from the CPU ``generator``, in
        this order: a permutation of the images; crop offsets (2, N) (rows, then columns) in
        [0, 2 * pad]; flip bits (N,). Without ``augment`` only the permutation is drawn. They are
        moved to the device once, so the same generator state gives the same batches on any device.
        """
        steps = self.batches_per_epoch(batch_size)
        if generator.device.type != "cpu":
            raise ValueError(
                f"train_batches needs a CPU torch.Generator (the same numbers on every device), got {generator.device}"
            )
        n = len(self)
        order = torch.randperm(n, generator=generator)
        if augment:
            offsets = torch.randint(0, 2 * self.pad + 1, (2, n), generator=generator)
            flips = torch.randint(0, 2, (n,), generator=generator).bool()
        else:
            offsets = torch.full((2, n), self.pad)
            flips = torch.zeros(n, dtype=torch.bool)
        order, offsets, flips = (t.to(self.device) for t in (order, offsets, flips))
        return self._train_iter(batch_size, steps, order, offsets, flips)

    def _train_iter(self, batch_size, steps, order, offsets, flips) -> Iterator[Batch]:
        for step in range(steps):
            window = slice(step * batch_size, (step + 1) * batch_size)
            index = order[window]
            yield self._crops(index, offsets[0, window], offsets[1, window], flips[window]), self.y[index]

    def eval_batches(self, batch_size: int) -> Iterator[Batch]:
        """The split in order, unaugmented (the centre of the padding), the last partial batch kept."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self._eval_iter(batch_size)

    def _eval_iter(self, batch_size: int) -> Iterator[Batch]:
        _, height, width = self.image_shape
        centre = self.x[:, self.pad : self.pad + height, self.pad : self.pad + width]
        for start in range(0, len(self), batch_size):
            yield self._normalise(centre[start : start + batch_size]), self.y[start : start + batch_size]

    def _crops(self, index: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """Crop windows of the padded images ``index`` at offsets (dy, dx), flipped where ``flip``."""
        rows = dy[:, None] + self._rows  # (B, H)
        cols = dx[:, None] + torch.where(flip[:, None], self._cols.flip(0), self._cols)  # (B, W)
        return self._normalise(self.x[index[:, None, None], rows[:, :, None], cols[:, None, :]])

    def _normalise(self, x_nhwc: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, C) -> normalised float32 (B, C, H, W) in the configured memory format."""
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x_nhwc.permute(0, 3, 1, 2).contiguous(memory_format=layout)
        return x.float().sub_(self._shift).mul_(self._scale)
