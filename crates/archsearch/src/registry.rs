//! Every strategy by name: its config in a study file, and how to build it.

use anyhow::Result;
use archsearch_core::strategies::{asha, evolution, fixed, hyperband, random, successive_halving};
use archsearch_core::{Space, Strategy};
use archsearch_rl::policy::PolicyKind;
use archsearch_rl::{ppo, reinforce};
use serde::{Deserialize, Serialize};

/// `[strategy]` of a study config: `kind` names the strategy, the other keys
/// are its config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum StrategyConfig {
    Random(random::Config),
    Evolution(evolution::Config),
    /// REINFORCE; independent policy unless `policy = "lstm"`.
    Reinforce(reinforce::Config),
    /// REINFORCE with the LSTM controller.
    ReinforceLstm(reinforce::Config),
    /// PPO; independent policy unless `policy = "lstm"`.
    Ppo(ppo::Config),
    /// PPO with the LSTM controller.
    PpoLstm(ppo::Config),
    /// A fixed list of architectures, in order.
    Fixed(fixed::Config),
    /// Successive halving over a budget ladder (multi-fidelity).
    SuccessiveHalving(successive_halving::Config),
    /// Hyperband: brackets of successive halving (multi-fidelity).
    Hyperband(hyperband::Config),
    /// Asynchronous successive halving (multi-fidelity, for worker pools).
    Asha(asha::Config),
    /// Population based training / PBT-NAS (drives training itself).
    Pbt(crate::pbt::Config),
}

/// The names `bench --strategies` accepts.
pub const NAMES: [&str; 9] =
    ["random", "evolution", "reinforce", "reinforce-lstm", "ppo", "ppo-lstm", "successive-halving", "hyperband", "asha"];

/// The budget ladder a multi-fidelity strategy gets from `bench`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ladder {
    pub min_budget: u64,
    pub max_budget: u64,
    pub eta: f64,
}

impl StrategyConfig {
    /// The default config of a strategy by name; multi-fidelity strategies
    /// take their budgets from `ladder`.
    pub fn by_name(name: &str, ladder: Option<Ladder>) -> Result<Self> {
        let ladder = || ladder.ok_or_else(|| anyhow::anyhow!("`{name}` needs a fidelity axis (min and max budget)"));
        let c = match name {
            "successive-halving" | "sh" => {
                let l = ladder()?;
                StrategyConfig::SuccessiveHalving(successive_halving::Config {
                    min_budget: l.min_budget,
                    max_budget: l.max_budget,
                    eta: l.eta,
                    n: None,
                })
            }
            "hyperband" => {
                let l = ladder()?;
                StrategyConfig::Hyperband(hyperband::Config { min_budget: l.min_budget, max_budget: l.max_budget, eta: l.eta })
            }
            "asha" => {
                let l = ladder()?;
                StrategyConfig::Asha(asha::Config {
                    min_budget: l.min_budget,
                    max_budget: l.max_budget,
                    eta: l.eta,
                    early_stopping_rate: 0,
                })
            }
            "random" => StrategyConfig::Random(Default::default()),
            "evolution" | "rea" => StrategyConfig::Evolution(Default::default()),
            "reinforce" => StrategyConfig::Reinforce(Default::default()),
            "reinforce-lstm" => StrategyConfig::ReinforceLstm(Default::default()),
            "ppo" => StrategyConfig::Ppo(Default::default()),
            "ppo-lstm" => StrategyConfig::PpoLstm(Default::default()),
            other => anyhow::bail!("unknown strategy `{other}` (known: {})", NAMES.join(", ")),
        };
        Ok(c.resolve())
    }

    pub fn name(&self) -> &'static str {
        match self {
            StrategyConfig::Random(_) => "random",
            StrategyConfig::Evolution(_) => "evolution",
            StrategyConfig::Reinforce(_) => "reinforce",
            StrategyConfig::ReinforceLstm(_) => "reinforce-lstm",
            StrategyConfig::Ppo(_) => "ppo",
            StrategyConfig::PpoLstm(_) => "ppo-lstm",
            StrategyConfig::Fixed(_) => "fixed",
            StrategyConfig::Pbt(_) => "pbt",
            StrategyConfig::SuccessiveHalving(_) => "successive-halving",
            StrategyConfig::Hyperband(_) => "hyperband",
            StrategyConfig::Asha(_) => "asha",
        }
    }

    /// Architectures the first bracket of a synchronous multi-fidelity
    /// strategy starts before any reaches its largest budget.
    pub fn first_bracket(&self, space: &Space) -> Result<Option<usize>> {
        Ok(match self {
            StrategyConfig::SuccessiveHalving(c) => {
                Some(successive_halving::SuccessiveHalving::new(space.clone(), c.clone(), 0)?.bracket_size())
            }
            StrategyConfig::Hyperband(c) => hyperband::Hyperband::new(space.clone(), c.clone(), 0)?.brackets().first().map(|b| b.0),
            _ => None,
        })
    }

    /// Every budget the strategy may ask a task for (none: full evaluations only).
    pub fn budgets(&self, space: &Space) -> Result<Vec<u64>> {
        Ok(match self {
            StrategyConfig::SuccessiveHalving(c) => successive_halving::ladder(c.min_budget, c.max_budget, c.eta)?,
            StrategyConfig::Hyperband(c) => successive_halving::ladder(c.min_budget, c.max_budget, c.eta)?,
            StrategyConfig::Asha(c) => asha::Asha::new(space.clone(), c.clone(), 0)?.budgets().to_vec(),
            _ => Vec::new(),
        })
    }

    /// Fills in defaults that depend on the variant (policy, learning rate).
    pub fn resolve(self) -> Self {
        use PolicyKind::*;
        match self {
            StrategyConfig::Reinforce(c) => StrategyConfig::Reinforce(c.resolve(Independent)),
            StrategyConfig::ReinforceLstm(c) => StrategyConfig::ReinforceLstm(c.resolve(Lstm)),
            StrategyConfig::Ppo(c) => StrategyConfig::Ppo(c.resolve(Independent)),
            StrategyConfig::PpoLstm(c) => StrategyConfig::PpoLstm(c.resolve(Lstm)),
            other => other,
        }
    }

    /// Sets the learning rate of a controller strategy (others ignore it).
    pub fn set_learning_rate(&mut self, lr: f64) {
        match self {
            StrategyConfig::Reinforce(c) | StrategyConfig::ReinforceLstm(c) => c.learning_rate = Some(lr),
            StrategyConfig::Ppo(c) | StrategyConfig::PpoLstm(c) => c.learning_rate = Some(lr),
            _ => {}
        }
    }

    /// Builds the strategy for `space`, seeded with `seed`.
    pub fn build(&self, space: &Space, seed: u64) -> Result<Box<dyn Strategy>> {
        let name = self.name();
        let lstm_only = |p: Option<PolicyKind>| -> Result<()> {
            if p == Some(PolicyKind::Independent) {
                anyhow::bail!("`{name}` uses the LSTM controller; `policy = \"independent\"` contradicts it");
            }
            Ok(())
        };
        Ok(match self.clone().resolve() {
            StrategyConfig::Random(c) => Box::new(random::RandomSearch::new(space.clone(), c, seed)),
            StrategyConfig::SuccessiveHalving(c) => Box::new(successive_halving::SuccessiveHalving::new(space.clone(), c, seed)?),
            StrategyConfig::Hyperband(c) => Box::new(hyperband::Hyperband::new(space.clone(), c, seed)?),
            StrategyConfig::Asha(c) => Box::new(asha::Asha::new(space.clone(), c, seed)?),
            StrategyConfig::Fixed(c) => Box::new(fixed::Fixed::new(space, c)?),
            StrategyConfig::Pbt(_) => anyhow::bail!("`pbt` trains its population itself; it has no ask/tell form"),
            StrategyConfig::Evolution(c) => Box::new(evolution::RegularizedEvolution::new(space.clone(), c, seed)?),
            StrategyConfig::Reinforce(c) => Box::new(reinforce::Reinforce::new(name, space, c, seed)?),
            StrategyConfig::ReinforceLstm(c) => {
                lstm_only(c.policy)?;
                Box::new(reinforce::Reinforce::new(name, space, c, seed)?)
            }
            StrategyConfig::Ppo(c) => Box::new(ppo::Ppo::new(name, space, c, seed)?),
            StrategyConfig::PpoLstm(c) => {
                lstm_only(c.policy)?;
                Box::new(ppo::Ppo::new(name, space, c, seed)?)
            }
        })
    }
}
