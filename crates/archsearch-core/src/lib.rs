//! Pure core of archsearch: what a search space is, what an architecture is,
//! what a trial records, and the ask/tell interface every search strategy
//! implements.
//!
//! Nothing in this crate does IO or touches tensors: strategies see the
//! results they are told, never the storage, and all randomness flows from a
//! seeded, serialisable [`Rng`]. That keeps studies deterministic and lets a
//! strategy's whole state be saved with the study and restored on resume.

pub mod space;
pub mod stats;
pub mod strategies;
pub mod strategy;
pub mod trial;

pub use space::{Architecture, Decision, HpKind, Hyperparameter, Space, SpaceError, SpaceKind};
pub use strategy::{Job, Outcome, Rng, Strategy, StrategyError};
pub use trial::{Direction, TrialState};
