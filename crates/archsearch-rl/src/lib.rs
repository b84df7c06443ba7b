//! Learned controllers `p_α(h)` for architecture search, trained with
//! policy gradients on tch (libtorch) autodiff.
//!
//! Two policies ([`policy`]): independent per-decision logits (NAS-Bench-201's
//! REINFORCE baseline) and a sequential LSTM controller that samples the
//! decisions one after another, each conditioned on the previous (Zoph & Le,
//! 2017). Two learning rules, one file each: [`reinforce`] (with a moving
//! average baseline) and [`ppo`] (clipped surrogate, several epochs per batch).
//!
//! The controller's parameters, Adam moments and random generator live in
//! plain Rust vectors; a tensor view of them is built for each forward pass.
//! That keeps the whole state serialisable, so a resumed study continues the
//! same search, bit for bit.

pub mod adam;
pub mod estimators;
pub mod policy;
pub mod ppo;
pub mod reinforce;
mod state;

pub use tch;

/// Sets libtorch's intra-op threads for the calling OS thread (tch's setting
/// is per thread). Controllers are tiny: one thread is fastest.
pub fn init_thread(threads: i32) {
    tch::set_num_threads(threads);
}

/// An exponential moving average of rewards, the REINFORCE baseline.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Baseline {
    pub value: Option<f64>,
}

impl Baseline {
    /// The advantage of `reward` over the average of the *previous* rewards
    /// (zero for the first), then folds `reward` into the average.
    pub fn advantage(&mut self, reward: f64, decay: f64) -> f64 {
        let b = self.value.unwrap_or(reward);
        self.value = Some(decay * b + (1.0 - decay) * reward);
        reward - b
    }
}
