//! Trial states and optimisation direction.

use serde::{Deserialize, Serialize};

/// The life cycle of a trial. `Running` and `Paused` trials change; the
/// others are final and immutable.
///
/// A multi-fidelity strategy *pauses* a trial evaluated below its largest
/// budget; it later resumes it (`Paused` → `Running`) or prunes it
/// (`Paused` → `Pruned`, at the step the trial had reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TrialState {
    Running,
    Paused,
    Complete,
    Fail,
    Pruned,
}

impl TrialState {
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Running => "RUNNING",
            TrialState::Paused => "PAUSED",
            TrialState::Complete => "COMPLETE",
            TrialState::Fail => "FAIL",
            TrialState::Pruned => "PRUNED",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RUNNING" => TrialState::Running,
            "PAUSED" => TrialState::Paused,
            "COMPLETE" => TrialState::Complete,
            "FAIL" => TrialState::Fail,
            "PRUNED" => TrialState::Pruned,
            _ => return None,
        })
    }
    pub fn is_finished(self) -> bool {
        !matches!(self, TrialState::Running | TrialState::Paused)
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
