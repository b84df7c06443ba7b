//! Trial states and optimisation direction.

use serde::{Deserialize, Serialize};

/// The life cycle of a trial. Only `Running` trials change; the others are
/// final and immutable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrialState {
    Running,
    Complete,
    Fail,
    Pruned,
}

impl TrialState {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Running => "RUNNING",
            TrialState::Complete => "COMPLETE",
            TrialState::Fail => "FAIL",
            TrialState::Pruned => "PRUNED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RUNNING" => TrialState::Running,
            "COMPLETE" => TrialState::Complete,
            "FAIL" => TrialState::Fail,
            "PRUNED" => TrialState::Pruned,
            _ => return None,
        })
    }
    pub fn is_finished(self) -> bool {
        self != TrialState::Running
    }
}

/// Whether the study maximises or minimises its objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Maximize,
    Minimize,
}

impl Direction {
    /// The value as a fitness to maximise.
    pub fn fitness(self, value: f64) -> f64 {
        match self {
            Direction::Maximize => value,
            Direction::Minimize => -value,
        }
    }
    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        self.fitness(a) > self.fitness(b)
    }
}
