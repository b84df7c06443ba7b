//! The search strategies that need no tensors. One file each.

pub mod evolution;
pub mod fixed;
pub mod random;
