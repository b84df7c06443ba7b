//! Layer-wise weight mixing with shrink-perturb, the step that makes a
//! PBT-NAS child (Chebykin, Alderliesten & Bosman, "Shrink-Perturb Improves
//! Architecture Mixing during Population Based Training for Neural
//! Architecture Search", ECAI 2023).
//!
//! A child starts as a copy of its fitter parent. Each position that takes
//! the other parent's option (the *donor*'s) takes the donor's weights for
//! that position too, shrink-perturbed: `w = λ·w_donor + γ·w_fresh`, where
//! `w_fresh` is a fresh initialisation of the child's layer. Tensors that are
//! not trained parameters (BatchNorm running statistics, integer counters)
//! are copied, not perturbed. Tensors owned by no position (stem, reductions,
//! head) come from the fitter parent.
//!
//! Everything works on named tensors, position by position, so it is
//! independent of the task and of the device. [`ownership`] reads who owns a
//! tensor from its name, for every network family alike: `pos3.…` belongs to
//! position 3 (decision index 3 of the space: a macro op, an NB201 edge, an
//! MLP layer's width or norm); `stem.…`, `reduce<N>.…` and `head.…` are
//! shared (every architecture has them, no position owns them). A tensor
//! whose name says neither is treated as shared; every network of
//! [`crate::nets`] names each tensor one way or the other (tested).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::TrainError;

/// `w = shrink·w_donor + perturb·w_fresh` for donated trained tensors.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShrinkPerturb {
    /// λ (PBT-NAS: 0.4).
    pub shrink: f64,
    /// γ (PBT-NAS: 0.1).
    pub perturb: f64,
}

impl ShrinkPerturb {
    /// The paper's default, λ = 0.4, γ = 0.1.
    pub const PAPER: ShrinkPerturb = ShrinkPerturb { shrink: 0.4, perturb: 0.1 };
    /// The "copy as-is" ablation.
    pub const COPY: ShrinkPerturb = ShrinkPerturb { shrink: 1.0, perturb: 0.0 };
    /// The "reinitialise" ablation.
    pub const REINIT: ShrinkPerturb = ShrinkPerturb { shrink: 0.0, perturb: 1.0 };

    fn apply(&self, donor: &Tensor, fresh: &Tensor) -> Tensor {
        if *self == Self::COPY {
            donor.copy()
        } else if *self == Self::REINIT {
            fresh.copy()
        } else {
            donor * self.shrink + fresh * self.perturb
        }
    }
}

/// Where a position of a child came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Copied from the fitter parent.
    Copied,
    /// Taken from the donor, trained tensors shrink-perturbed (λ < 1 or γ > 0).
    ShrinkPerturbed,
    /// Taken from the donor as-is (λ = 1, γ = 0).
    Donated,
    /// Freshly initialised (λ = 0, γ = 1).
    Fresh,
}

/// Who owns a named tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// The position (decision index) whose option the tensor belongs to:
    /// `pos3.…` → 3. It moves with that position when a child is mixed.
    Position(usize),
    /// A tensor of the fixed part of the network, owned by no position: the
    /// stem (`stem.…`), fixed reductions (`reduce1.…`) and the classifier
    /// (`head.…`). A child takes it from its fitter parent.
    Shared,
}

/// `N` if `s` is `prefix` followed by a decimal number `N` (digits only).
fn numbered(s: &str, prefix: &str) -> Option<usize> {
    let n = s.strip_prefix(prefix)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Who owns the tensor `name`, read from its first dotted component;
/// `None` if the name follows neither form (mixing treats it as shared).
pub fn ownership(name: &str) -> Option<Ownership> {
    let first = name.split('.').next()?;
    if let Some(i) = numbered(first, "pos") {
        return Some(Ownership::Position(i));
    }
    if first == "stem" || first == "head" || numbered(first, "reduce").is_some() {
        return Some(Ownership::Shared);
    }
    None
}

/// The position that owns a tensor (`pos3.conv.weight` → 3), if any.
pub fn owner(name: &str) -> Option<usize> {
    match ownership(name) {
        Some(Ownership::Position(i)) => Some(i),
        _ => None,
    }
}

/// The child's tensors and, per position, where it came from.
pub struct Mixed {
    pub tensors: BTreeMap<String, Tensor>,
    pub origins: Vec<Origin>,
}

/// Mixes weights for a child whose position `i` came from the donor iff
/// `from_donor[i]`.
///
/// * `fresh` — the child's freshly initialised tensors (every name the child has);
/// * `trainable` — which of those names are trained parameters;
/// * `fitter`, `donor` — the parents' tensors.
///
/// A name the child needs that the parent it should come from lacks, or
/// with another shape, is an error naming the tensor.
pub fn mix(
    fresh: &BTreeMap<String, Tensor>,
    trainable: &BTreeSet<String>,
    fitter: &BTreeMap<String, Tensor>,
    donor: &BTreeMap<String, Tensor>,
    from_donor: &[bool],
    sp: ShrinkPerturb,
) -> Result<Mixed, TrainError> {
    let take = |parent: &BTreeMap<String, Tensor>, which: &str, name: &str, like: &Tensor| -> Result<Tensor, TrainError> {
        let t = parent.get(name).ok_or_else(|| TrainError::Config(format!("mixing: the {which} parent has no tensor `{name}`")))?;
        if t.size() != like.size() {
            return Err(TrainError::Config(format!(
                "mixing: `{name}` of the {which} parent has shape {:?}, the child needs {:?}",
                t.size(),
                like.size()
            )));
        }
        Ok(t.shallow_clone())
    };
    let mut tensors = BTreeMap::new();
    tch::no_grad(|| -> Result<(), TrainError> {
        for (name, f) in fresh {
            let donated = owner(name).is_some_and(|i| from_donor.get(i).copied().unwrap_or(false));
            let t = if !donated {
                take(fitter, "fitter", name, f)?.copy()
            } else if trainable.contains(name) {
                sp.apply(&take(donor, "donor", name, f)?, f)
            } else {
                take(donor, "donor", name, f)?.copy()
            };
            tensors.insert(name.clone(), t);
        }
        Ok(())
    })?;
    let donor_origin = if sp == ShrinkPerturb::COPY {
        Origin::Donated
    } else if sp == ShrinkPerturb::REINIT {
        Origin::Fresh
    } else {
        Origin::ShrinkPerturbed
    };
    let origins = from_donor.iter().map(|&d| if d { donor_origin } else { Origin::Copied }).collect();
    Ok(Mixed { tensors, origins })
}

/// The fitter parent's optimiser state for the child: every entry
/// `optim.<param>.<buffer>` whose parameter the child has with the same
/// shape is kept; the others are dropped (they start at zero).
pub fn keep_optimizer_state(fitter_state: &BTreeMap<String, Tensor>, child: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    fitter_state
        .iter()
        .filter(|(k, v)| {
            k.strip_prefix("optim.")
                .and_then(|rest| rest.rsplit_once('.'))
                .and_then(|(param, _)| child.get(param))
                .is_some_and(|p| p.size() == v.size())
        })
        .map(|(k, v)| (k.clone(), v.copy()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v)
    }

    /// Three positions; position 1 owns a weight and BatchNorm statistics.
    fn set(w0: f32, w1: f32, rm: f32, count: i64, head: f32) -> BTreeMap<String, Tensor> {
        BTreeMap::from([
            ("stem.weight".to_string(), t(&[head, head])),
            ("pos0.conv.weight".to_string(), t(&[w0, -w0])),
            ("pos1.conv.weight".to_string(), t(&[w1, 2.0 * w1])),
            ("pos1.bn.running_mean".to_string(), t(&[rm])),
            ("pos1.bn.num_batches_tracked".to_string(), Tensor::from(count)),
            ("head.weight".to_string(), t(&[head])),
        ])
    }

    fn trainable() -> BTreeSet<String> {
        ["stem.weight", "pos0.conv.weight", "pos1.conv.weight", "head.weight"].iter().map(|s| s.to_string()).collect()
    }

    fn vals(m: &BTreeMap<String, Tensor>, k: &str) -> Vec<f64> {
        Vec::<f64>::try_from(m[k].to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn only_donated_positions_move_and_only_trained_tensors_are_perturbed() {
        let fitter = set(1.0, 2.0, 5.0, 7, 9.0);
        let donor = set(10.0, 20.0, 50.0, 70, 90.0);
        let fresh = set(100.0, 200.0, 500.0, 0, 900.0);
        let m = mix(&fresh, &trainable(), &fitter, &donor, &[false, true, false], ShrinkPerturb::PAPER).unwrap();
        // Position 0 and the unowned tensors: the fitter's, unchanged.
        assert_eq!(vals(&m.tensors, "pos0.conv.weight"), vec![1.0, -1.0]);
        assert_eq!(vals(&m.tensors, "stem.weight"), vec![9.0, 9.0]);
        assert_eq!(vals(&m.tensors, "head.weight"), vec![9.0]);
        // Position 1's trained weight: 0.4 · donor + 0.1 · fresh.
        let w = vals(&m.tensors, "pos1.conv.weight");
        assert!((w[0] - (0.4 * 20.0 + 0.1 * 200.0)).abs() < 1e-4 && (w[1] - (0.4 * 40.0 + 0.1 * 400.0)).abs() < 1e-4, "{w:?}");
        // Its statistics and counter: the donor's, copied.
        assert_eq!(vals(&m.tensors, "pos1.bn.running_mean"), vec![50.0]);
        assert_eq!(m.tensors["pos1.bn.num_batches_tracked"].int64_value(&[]), 70);
        assert_eq!(m.tensors["pos1.bn.num_batches_tracked"].kind(), Kind::Int64);
        assert_eq!(m.origins, vec![Origin::Copied, Origin::ShrinkPerturbed, Origin::Copied]);
    }

    #[test]
    fn copy_ablation_copies_bit_for_bit_and_reinit_takes_the_fresh_weights() {
        let fitter = set(1.0, 2.0, 5.0, 7, 9.0);
        let mut donor = set(10.0, -0.0, 50.0, 70, 90.0);
        donor.insert("pos1.conv.weight".into(), t(&[-0.0, 1.0e-38]));
        let fresh = set(100.0, 200.0, 500.0, 0, 900.0);
        let m = mix(&fresh, &trainable(), &fitter, &donor, &[false, true, false], ShrinkPerturb::COPY).unwrap();
        let bits = |x: &Tensor| Vec::<f32>::try_from(x).unwrap().iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&m.tensors["pos1.conv.weight"]), bits(&donor["pos1.conv.weight"]));
        assert_eq!(m.origins[1], Origin::Donated);
        let r = mix(&fresh, &trainable(), &fitter, &donor, &[false, true, false], ShrinkPerturb::REINIT).unwrap();
        assert_eq!(vals(&r.tensors, "pos1.conv.weight"), vec![200.0, 400.0]);
        // Statistics still come from the donor, not from the fresh layer.
        assert_eq!(vals(&r.tensors, "pos1.bn.running_mean"), vec![50.0]);
        assert_eq!(r.origins[1], Origin::Fresh);
    }

    #[test]
    fn no_mixing_is_a_copy_of_the_fitter() {
        let fitter = set(1.0, 2.0, 5.0, 7, 9.0);
        let donor = set(10.0, 20.0, 50.0, 70, 90.0);
        let fresh = set(100.0, 200.0, 500.0, 0, 900.0);
        let m = mix(&fresh, &trainable(), &fitter, &donor, &[false, false, false], ShrinkPerturb::PAPER).unwrap();
        for (k, v) in &fitter {
            assert!(m.tensors[k].equal(v), "{k}");
        }
    }

    #[test]
    fn shape_mismatches_name_the_tensor() {
        let fitter = set(1.0, 2.0, 5.0, 7, 9.0);
        let mut donor = set(10.0, 20.0, 50.0, 70, 90.0);
        donor.insert("pos1.conv.weight".into(), t(&[1.0, 2.0, 3.0]));
        let fresh = set(100.0, 200.0, 500.0, 0, 900.0);
        let e = mix(&fresh, &trainable(), &fitter, &donor, &[false, true, false], ShrinkPerturb::PAPER).err().unwrap();
        assert!(e.to_string().contains("pos1.conv.weight"), "{e}");
    }

    #[test]
    fn optimizer_state_is_kept_where_shapes_match() {
        let child = BTreeMap::from([("pos0.w".to_string(), t(&[0.0, 0.0])), ("pos1.w".to_string(), t(&[0.0]))]);
        let state = BTreeMap::from([
            ("optim.pos0.w.exp_avg".to_string(), t(&[1.0, 2.0])),
            ("optim.pos1.w.exp_avg".to_string(), t(&[1.0, 2.0, 3.0])),
            ("optim.gone.w.exp_avg".to_string(), t(&[1.0])),
        ]);
        let kept = keep_optimizer_state(&state, &child);
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["optim.pos0.w.exp_avg"]);
    }

    #[test]
    fn owners() {
        assert_eq!(owner("pos12.conv.weight"), Some(12));
        assert_eq!(owner("pos3.stage0.cell1.bn.weight"), Some(3));
        assert_eq!(owner("stem.conv.weight"), None);
        assert_eq!(owner("position.x"), None);
        assert_eq!(owner("pos+3.x"), None);
        assert_eq!(owner("pos.x"), None);
        assert_eq!(ownership("pos0.layer1.linear.weight"), Some(Ownership::Position(0)));
        for shared in ["stem.conv.weight", "stem.bn.running_mean", "reduce2.a.conv.weight", "head.weight", "head.bn.bias"] {
            assert_eq!(ownership(shared), Some(Ownership::Shared), "{shared}");
        }
        for unknown in ["layer1.linear.weight", "reduce.conv.weight", "header.weight", "fc1.weight", ""] {
            assert_eq!(ownership(unknown), None, "{unknown}");
        }
    }
}
