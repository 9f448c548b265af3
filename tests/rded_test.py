"""methods.decoupled.rded: crop choice, top-k per class, stitching, seeds."""

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from distill_jax.methods.decoupled import rded

jax.config.update("jax_numpy_rank_promotion", "raise")

C, PER_CLASS, H = 3, 8, 8


def marked_images():
  """Image j carries brightness b_j at pixel (0, 0) and zeros elsewhere."""
  y = np.arange(C * PER_CLASS) % C
  x = np.zeros((C * PER_CLASS, H, H, 1), np.float32)
  rng = np.random.default_rng(0)
  x[:, 0, 0, 0] = rng.permutation(C * PER_CLASS) + 1.0  # distinct, > 0
  return x, y.astype(np.int32)


def shift_crops(key, images, n_crops):
  """Crop 0 is the image; crop j > 0 rolls it by a random non-zero shift."""
  shifts = jax.random.randint(key, (n_crops, 2), 1, H)
  crops = [images] + [jnp.roll(images, (int(s[0]), int(s[1])), axis=(1, 2))
                      for s in np.asarray(shifts[1:])]
  return jnp.stack(crops, axis=1)


def marker_ce(images, labels):
  """Low 'CE' iff the bright marker sits at (0, 0); brighter is better."""
  del labels
  return -np.asarray(images)[:, 0, 0, 0]


def centre_crops(key, images, n_crops):
  """Random-size centre crops resized back to the full side."""
  n, h, w, ch = images.shape
  sizes = np.asarray(jax.random.randint(key, (n_crops,), h // 2, h + 1))
  out = []
  for s in sizes:
    o = (h - int(s)) // 2
    crop = images[:, o:o + int(s), o:o + int(s)]
    out.append(jax.image.resize(crop, (n, h, w, ch), "linear"))
  return jnp.stack(out, axis=1)


class SelectTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.x, self.y = marked_images()

  def test_preferred_crop_and_top_images_selected(self):
    out = rded.select(jax.random.key(0), self.x, self.y, num_classes=C,
                      ipc=2, score_fn=marker_ce, crop_fn=shift_crops,
                      num_crops=4, num_candidates=PER_CLASS)
    self.assertEqual(out.images.shape, (C, 2, H, H, 1))
    np.testing.assert_array_equal(out.labels, np.repeat(
        np.arange(C)[:, None], 2, 1))
    for c in range(C):
      idx = np.flatnonzero(self.y == c)
      best = idx[np.argsort(-self.x[idx, 0, 0, 0])[:2]]
      np.testing.assert_array_equal(out.source_index[c, :, 0], best)
      # The unshifted crop wins: the output is the real image itself.
      np.testing.assert_array_equal(out.images[c], self.x[best])
      np.testing.assert_array_equal(out.scores[c, :, 0],
                                    -self.x[best, 0, 0, 0])
    self.assertTrue(np.all(np.diff(out.scores[..., 0], axis=1) >= 0))

  def test_factor_two_layout(self):
    out = rded.select(jax.random.key(1), self.x, self.y, num_classes=C,
                      ipc=2, score_fn=marker_ce, crop_fn=shift_crops,
                      factor=2, num_crops=3, num_candidates=PER_CLASS)
    self.assertEqual(out.images.shape, (C, 2, H, H, 1))
    self.assertEqual(out.scores.shape, (C, 2, 4))
    self.assertEqual(out.source_index.shape, (C, 2, 4))
    for c in range(C):
      src = out.source_index[c]
      self.assertLen(np.unique(src), 8)  # one crop per real image
      self.assertTrue(np.all(self.y[src] == c))
      # Cell k of image i holds the (k * ipc + i)-th best crop.
      ranked = out.scores[c].T.reshape(-1)
      self.assertTrue(np.all(np.diff(ranked) >= 0))
      for i in range(2):
        for k, (r, q) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
          # Nearest 2x downsampling keeps the marker pixel of each crop.
          self.assertEqual(out.images[c, i, r, q, 0],
                           self.x[src[i, k], 0, 0, 0])

  def test_odd_side_cells_and_stitch(self):
    cells = np.stack([np.full((1, 3, 3, 1), k, np.float32)
                      for k in range(4)])
    img = rded.stitch(cells, (5, 5), 2)[0, ..., 0]
    np.testing.assert_array_equal(img[:3, :3], 0)  # first cells get 3 px
    np.testing.assert_array_equal(img[:3, 3:], 1)
    np.testing.assert_array_equal(img[3:, :3], 2)
    np.testing.assert_array_equal(img[3:, 3:], 3)

  def test_nearest_resize_matches_torch_convention(self):
    # torch nearest: source index floor(i * in / out) -> rows/cols 0 and 2.
    cell = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4, 1)
    img = rded.stitch(np.repeat(cell, 4, 0), (4, 4), 2)[0, ..., 0]
    np.testing.assert_array_equal(img[:2, :2], [[0, 2], [8, 10]])
    up = rded.stitch(cell[:, :, :2, :2], (3, 3), 1)[0, ..., 0]
    np.testing.assert_array_equal(up, [[0, 0, 1], [0, 0, 1], [4, 4, 5]])

  def test_deterministic_and_key_dependent(self):
    kw = dict(num_classes=C, ipc=2, score_fn=lambda im, lab: np.asarray(
        im).mean((1, 2, 3)), crop_fn=centre_crops, num_crops=3,
              num_candidates=5, score_batch=4)
    a = rded.select(jax.random.key(3), self.x, self.y, **kw)
    b = rded.select(jax.random.key(3), self.x, self.y, **kw)
    d = rded.select(jax.random.key(4), self.x, self.y, **kw)
    for u, v in zip(a, b):
      np.testing.assert_array_equal(u, v)
    self.assertFalse(np.array_equal(a.source_index, d.source_index)
                     and np.array_equal(a.images, d.images))

  def test_too_few_candidates(self):
    with self.assertRaises(ValueError):
      rded.select(jax.random.key(0), self.x, self.y, num_classes=C, ipc=2,
                  score_fn=marker_ce, crop_fn=shift_crops, factor=2,
                  num_candidates=3)

  def test_pad_center(self):
    p = rded.pad_center(np.ones((2, 3, 3, 1)), 8)
    self.assertEqual(p.shape, (2, 8, 8, 1))
    self.assertEqual(p.sum(), 18)
    np.testing.assert_array_equal(p[0, 2:5, 2:5, 0], 1)


class RandomRealTest(absltest.TestCase):

  def test_shapes_classes_and_seed(self):
    x, y = marked_images()
    imgs, labels = rded.random_real(jax.random.key(0), x, y, 3, C)
    self.assertEqual(imgs.shape, (C, 3, H, H, 1))
    np.testing.assert_array_equal(labels, np.repeat(np.arange(C)[:, None],
                                                    3, 1))
    marker = {float(v): j for j, v in enumerate(x[:, 0, 0, 0])}
    for c in range(C):
      src = [marker[float(v)] for v in imgs[c, :, 0, 0, 0]]
      self.assertLen(set(src), 3)
      self.assertTrue(np.all(y[src] == c))
    again, _ = rded.random_real(jax.random.key(0), x, y, 3, C)
    np.testing.assert_array_equal(imgs, again)


if __name__ == "__main__":
  absltest.main()
