"""Sec. 3.3: M < D distilled points cannot reach theta* from any theta_0."""

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np

from distill_jax.methods import linear_regression
from tests import test_utils  # pylint: disable=unused-import

DIM = 4


class LinearRegressionTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.d, self.t, self.theta_star = linear_regression.make_problem(
        jax.random.key(0), 40, DIM)
    self.theta0s = np.asarray(jax.random.normal(jax.random.key(1),
                                                (64, DIM)), np.float64)

  def test_optimum_minimises_loss(self):
    grad = self.d.T @ (self.d @ self.theta_star - self.t)
    np.testing.assert_allclose(grad, 0.0, atol=1e-8)

  @parameterized.parameters(DIM, DIM + 2)
  def test_m_at_least_d_reaches_optimum_from_any_init(self, m):
    d_t, t_t = linear_regression.optimal_distilled(self.theta_star, m, 0.3)
    np.testing.assert_allclose(d_t.T @ d_t, (m / 0.3) * np.eye(DIM),
                               atol=1e-8)
    self.assertTrue(linear_regression.reaches_optimum(
        d_t, t_t, 0.3, self.theta_star, 10.0 * self.theta0s, tol=1e-5))
    theta1 = np.asarray(linear_regression.one_step(
        self.theta0s, d_t, t_t, 0.3))
    np.testing.assert_allclose(
        [float(linear_regression.loss(th, self.d, self.t)) for th in theta1],
        float(linear_regression.loss(self.theta_star, self.d, self.t)),
        rtol=1e-4)

  @parameterized.parameters(1, DIM - 1)
  def test_m_below_d_cannot_reach_optimum(self, m):
    bound = linear_regression.min_mean_residual(self.theta0s,
                                                self.theta_star, m)
    self.assertGreater(bound, 0.1)
    # The constructive set attains the bound ...
    d_t, t_t = linear_regression.optimal_distilled(
        self.theta_star, m, 0.5, theta0s=self.theta0s)
    theta1 = np.asarray(linear_regression.one_step(self.theta0s, d_t, t_t,
                                                   0.5))
    res = np.mean(np.sum((theta1 - self.theta_star) ** 2, -1))
    np.testing.assert_allclose(res, bound, rtol=1e-6)
    self.assertFalse(linear_regression.reaches_optimum(
        d_t, t_t, 0.5, self.theta_star, self.theta0s, tol=1e-3))
    # ... and solving numerically for (d~, t~) does no better.
    _, _, fitted = linear_regression.fit_distilled(
        jax.random.key(2), self.theta_star, self.theta0s, m, 0.5, steps=800,
        learning_rate=0.05)
    self.assertGreaterEqual(fitted, bound * (1 - 1e-4))
    self.assertLess(fitted, bound * 1.5)

  def test_numeric_solve_with_m_equal_d_reaches_zero(self):
    _, _, fitted = linear_regression.fit_distilled(
        jax.random.key(3), self.theta_star, self.theta0s, DIM, 1.0,
        steps=1500, learning_rate=0.05)
    self.assertLess(fitted, 1e-4)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "theta0s"):
      linear_regression.optimal_distilled(self.theta_star, 2)
    with self.assertRaisesRegex(ValueError, "lr"):
      linear_regression.optimal_distilled(self.theta_star, DIM, lr=0.0)
    with self.assertRaisesRegex(ValueError, "m=0"):
      linear_regression.min_mean_residual(self.theta0s, self.theta_star, 0)


if __name__ == "__main__":
  absltest.main()
