//! Adam (Kingma & Ba, 2015) on a flat parameter vector, in plain Rust so that
//! its moments are part of the saved strategy state.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub step: u64,
    #[serde(skip)]
    pub m: Vec<f32>,
    #[serde(skip)]
    pub v: Vec<f32>,
}

impl Adam {
    pub fn new(n: usize, lr: f64) -> Self {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 0, m: vec![0.0; n], v: vec![0.0; n] }
    }

    /// One descent step on `params` along `grad`.
    pub fn update(&mut self, params: &mut [f32], grad: &[f32]) {
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.step as i32);
        let c2 = 1.0 - b2.powi(self.step as i32);
        let step = (self.lr / c1) as f32;
        let c2 = c2 as f32;
        let (b1, b2, eps) = (b1 as f32, b2 as f32, self.eps as f32);
        for i in 0..params.len() {
            let g = grad[i];
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * g;
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * g * g;
            params[i] -= step * self.m[i] / ((self.v[i] / c2).sqrt() + eps);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn adam_minimises_a_quadratic() {
        let mut p = vec![3.0f32, -2.0];
        let mut adam = super::Adam::new(2, 0.1);
        for _ in 0..500 {
            let g: Vec<f32> = p.iter().map(|x| 2.0 * x).collect();
            adam.update(&mut p, &g);
        }
        assert!(p.iter().all(|x| x.abs() < 1e-2), "{p:?}");
    }
}
