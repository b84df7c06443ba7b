//! Search spaces and architectures.
//!
//! A [`Space`] is a list of named [`Decision`]s (each a categorical choice
//! among named options) plus optional numeric [`Hyperparameter`]s. An
//! [`Architecture`] is one point of a space: the option index chosen at every
//! position and a value for every hyperparameter. Every operation a strategy
//! needs (sample, mutate, mix, canonical string, hash, parse) lives here and
//! keeps its result inside the space.

use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

use crate::strategy::Rng;

/// The NAS-Bench-201 operations, in the benchmark's own order.
pub const NB201_OPS: [&str; 5] = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"];
/// The NAS-Bench-201 cell edges as `(from, to)` node pairs, in the order of
/// the benchmark's cell strings: node 1's input, node 2's two, node 3's three.
pub const NB201_EDGES: [(usize, usize); 6] = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)];

/// Errors about spaces and architectures. Each names the position, option or
/// text at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpaceError {
    #[error("invalid space: {0}")]
    Invalid(String),
    #[error("architecture has {got} positions, the space has {expected}")]
    Length { expected: usize, got: usize },
    #[error("position `{position}` has {options} options, option index {index} is out of range")]
    OptionOutOfRange { position: String, index: usize, options: usize },
    #[error("position `{position}` has no option named `{option}` (options: {known})")]
    UnknownOption { position: String, option: String, known: String },
    #[error("hyperparameter `{name}` = {value} is outside [{low}, {high}]")]
    HyperOutOfRange { name: String, value: f64, low: f64, high: f64 },
    #[error("hyperparameter `{name}` must be an integer, got {value}")]
    HyperNotInteger { name: String, value: f64 },
    #[error("architecture has {got} hyperparameter values, the space has {expected}")]
    HyperLength { expected: usize, got: usize },
    #[error("cannot parse architecture `{text}`: {reason}")]
    Parse { text: String, reason: String },
}

/// One categorical decision: a named position and its named options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub name: String,
    pub options: Vec<String>,
}

/// Whether a hyperparameter is real-valued or integer-valued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HpKind {
    Float,
    Int,
}

/// A numeric hyperparameter with bounds, on a linear or log scale.
/// Population-based training perturbs these; architecture strategies sample
/// them uniformly (on their scale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hyperparameter {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: HpKind,
    pub low: f64,
    pub high: f64,
    /// Sample and perturb on a log scale (needs `low > 0`).
    #[serde(default)]
    pub log: bool,
}

impl Hyperparameter {
    /// A uniform sample on the hyperparameter's scale.
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        let u: f64 = rng.random();
        let v = if self.log { (self.low.ln() + u * (self.high.ln() - self.low.ln())).exp() } else { self.low + u * (self.high - self.low) };
        self.clamp(v)
    }

    /// Clamps into the bounds (and rounds integers).
    pub fn clamp(&self, v: f64) -> f64 {
        let v = v.clamp(self.low, self.high);
        match self.kind {
            HpKind::Float => v,
            HpKind::Int => v.round().clamp(self.low.ceil(), self.high.floor()),
        }
    }

    fn check(&self, v: f64) -> Result<(), SpaceError> {
        if !(v >= self.low && v <= self.high) {
            return Err(SpaceError::HyperOutOfRange { name: self.name.clone(), value: v, low: self.low, high: self.high });
        }
        if self.kind == HpKind::Int && v.fract() != 0.0 {
            return Err(SpaceError::HyperNotInteger { name: self.name.clone(), value: v });
        }
        Ok(())
    }
}

/// How a space writes its architectures as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpaceKind {
    /// A chain of positions; canonical form is the option names joined by `,`.
    Sequence,
    /// The NAS-Bench-201 cell; canonical form is the benchmark's cell string.
    Nb201,
}

/// A search space as a config file declares it (`[space]` in a study config,
/// or a whole space file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SpaceSpec {
    /// `length` positions with the same options each: either `num_options`
    /// options named `op0`, `op1`, … or the listed `options`.
    Sequence {
        length: usize,
        #[serde(default)]
        num_options: Option<usize>,
        #[serde(default)]
        options: Option<Vec<String>>,
        #[serde(default)]
        hyperparameters: Vec<Hyperparameter>,
    },
    /// The NAS-Bench-201 cell: 6 edges × 5 ops.
    Nb201 {
        #[serde(default)]
        hyperparameters: Vec<Hyperparameter>,
    },
    /// Named positions with named options, listed one by one.
    Custom {
        decisions: Vec<Decision>,
        #[serde(default)]
        hyperparameters: Vec<Hyperparameter>,
    },
}

impl SpaceSpec {
    /// Builds and validates the space.
    pub fn build(&self) -> Result<Space, SpaceError> {
        match self {
            SpaceSpec::Sequence { length, num_options, options, hyperparameters } => {
                let opts = match (num_options, options) {
                    (Some(k), None) => (0..*k).map(|i| format!("op{i}")).collect(),
                    (None, Some(o)) => o.clone(),
                    _ => return Err(SpaceError::Invalid("a sequence space needs exactly one of `num_options` or `options`".into())),
                };
                if *length == 0 {
                    return Err(SpaceError::Invalid("length = 0: a sequence space needs at least one position".into()));
                }
                Space::sequence_named(*length, opts, hyperparameters.clone())
            }
            SpaceSpec::Nb201 { hyperparameters } => Space::nb201().with_hyperparameters(hyperparameters.clone()),
            SpaceSpec::Custom { decisions, hyperparameters } => Space::new(SpaceKind::Sequence, decisions.clone(), hyperparameters.clone()),
        }
    }
}

/// One point of a space: the option index at each position, and a value per
/// hyperparameter (integers are stored as integral `f64`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Architecture {
    pub choices: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hyper: Vec<f64>,
}

impl Architecture {
    pub fn new(choices: Vec<usize>) -> Self {
        Architecture { choices, hyper: Vec::new() }
    }
}

/// A validated search space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Space {
    kind: SpaceKind,
    decisions: Vec<Decision>,
    hyperparameters: Vec<Hyperparameter>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

impl Space {
    /// A space from its parts; checks names are unique and well formed and
    /// every decision has at least one option.
    pub fn new(kind: SpaceKind, decisions: Vec<Decision>, hyperparameters: Vec<Hyperparameter>) -> Result<Self, SpaceError> {
        if decisions.is_empty() {
            return Err(SpaceError::Invalid("a space needs at least one decision".into()));
        }
        let mut names = std::collections::HashSet::new();
        for d in &decisions {
            if !valid_name(&d.name) {
                return Err(SpaceError::Invalid(format!("decision name `{}` must be letters, digits, `_`, `-` or `.`", d.name)));
            }
            if !names.insert(d.name.as_str()) {
                return Err(SpaceError::Invalid(format!("decision `{}` is declared twice", d.name)));
            }
            if d.options.is_empty() {
                return Err(SpaceError::Invalid(format!("decision `{}` has no options", d.name)));
            }
            let mut opts = std::collections::HashSet::new();
            for o in &d.options {
                if !valid_name(o) {
                    return Err(SpaceError::Invalid(format!(
                        "option `{o}` of decision `{}` must be letters, digits, `_`, `-` or `.`",
                        d.name
                    )));
                }
                if !opts.insert(o.as_str()) {
                    return Err(SpaceError::Invalid(format!("option `{o}` of decision `{}` is listed twice", d.name)));
                }
            }
        }
        for h in &hyperparameters {
            if !valid_name(&h.name) || !names.insert(h.name.as_str()) {
                return Err(SpaceError::Invalid(format!("hyperparameter name `{}` is malformed or already used", h.name)));
            }
            if !(h.low.is_finite() && h.high.is_finite() && h.low < h.high) {
                return Err(SpaceError::Invalid(format!("hyperparameter `{}` needs finite low < high", h.name)));
            }
            if h.log && h.low <= 0.0 {
                return Err(SpaceError::Invalid(format!("hyperparameter `{}` is on a log scale and needs low > 0", h.name)));
            }
            if h.kind == HpKind::Int && h.low.ceil() > h.high.floor() {
                return Err(SpaceError::Invalid(format!("hyperparameter `{}` has no integer in its bounds", h.name)));
            }
        }
        Ok(Space { kind, decisions, hyperparameters })
    }

    /// The sequence space of `length` positions with `k` options each
    /// (`op0`..`op{k-1}`), e.g. the seed problem `L = 20`, `K = 7`.
    pub fn sequence(length: usize, k: usize) -> Self {
        Self::sequence_named(length, (0..k).map(|i| format!("op{i}")).collect(), Vec::new())
            .expect("sequence space with k >= 1 and length >= 1")
    }

    fn sequence_named(length: usize, options: Vec<String>, hyper: Vec<Hyperparameter>) -> Result<Self, SpaceError> {
        let decisions = (0..length).map(|i| Decision { name: format!("pos{i}"), options: options.clone() }).collect();
        Space::new(SpaceKind::Sequence, decisions, hyper)
    }

    /// The NAS-Bench-201 cell space: 6 edges, each one of [`NB201_OPS`].
    pub fn nb201() -> Self {
        let decisions = NB201_EDGES
            .iter()
            .map(|(i, j)| Decision { name: format!("edge{i}{j}"), options: NB201_OPS.iter().map(|s| s.to_string()).collect() })
            .collect();
        Space::new(SpaceKind::Nb201, decisions, Vec::new()).expect("the NB201 space is valid")
    }

    fn with_hyperparameters(self, hyper: Vec<Hyperparameter>) -> Result<Self, SpaceError> {
        Space::new(self.kind, self.decisions, hyper)
    }

    pub fn kind(&self) -> SpaceKind {
        self.kind
    }
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions
    }
    pub fn hyperparameters(&self) -> &[Hyperparameter] {
        &self.hyperparameters
    }
    /// Number of positions `L`.
    pub fn len(&self) -> usize {
        self.decisions.len()
    }
    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty()
    }
    /// Number of options at each position.
    pub fn num_options(&self) -> Vec<usize> {
        self.decisions.iter().map(|d| d.options.len()).collect()
    }
    /// Number of distinct architectures (ignoring hyperparameters).
    pub fn cardinality(&self) -> f64 {
        self.decisions.iter().map(|d| d.options.len() as f64).product()
    }

    /// Checks that `a` is a point of this space.
    pub fn validate(&self, a: &Architecture) -> Result<(), SpaceError> {
        if a.choices.len() != self.decisions.len() {
            return Err(SpaceError::Length { expected: self.decisions.len(), got: a.choices.len() });
        }
        for (d, &c) in self.decisions.iter().zip(&a.choices) {
            if c >= d.options.len() {
                return Err(SpaceError::OptionOutOfRange { position: d.name.clone(), index: c, options: d.options.len() });
            }
        }
        if a.hyper.len() != self.hyperparameters.len() {
            return Err(SpaceError::HyperLength { expected: self.hyperparameters.len(), got: a.hyper.len() });
        }
        for (h, &v) in self.hyperparameters.iter().zip(&a.hyper) {
            h.check(v)?;
        }
        Ok(())
    }

    /// A uniform sample: every position and hyperparameter independently.
    pub fn sample(&self, rng: &mut Rng) -> Architecture {
        Architecture {
            choices: self.decisions.iter().map(|d| rng.random_range(0..d.options.len())).collect(),
            hyper: self.hyperparameters.iter().map(|h| h.sample(rng)).collect(),
        }
    }

    /// `n` samples stratified per position: at each position every option
    /// appears `n / K` or `n / K + 1` times, in a random order.
    pub fn sample_stratified(&self, n: usize, rng: &mut Rng) -> Vec<Architecture> {
        let mut out: Vec<Architecture> = (0..n)
            .map(|_| Architecture {
                choices: Vec::with_capacity(self.len()),
                hyper: self.hyperparameters.iter().map(|h| h.sample(rng)).collect(),
            })
            .collect();
        for d in &self.decisions {
            let k = d.options.len();
            let mut column: Vec<usize> = (0..n).map(|i| i % k).collect();
            // Which options get the extra copies is random too.
            let mut order: Vec<usize> = (0..k).collect();
            order.shuffle(rng);
            for c in &mut column {
                *c = order[*c];
            }
            column.shuffle(rng);
            for (a, c) in out.iter_mut().zip(column) {
                a.choices.push(c);
            }
        }
        out
    }

    /// Changes one uniformly chosen position to a different option (chosen
    /// uniformly among the others). Positions with a single option are never
    /// chosen; if every position has one option the architecture is returned
    /// unchanged. Returns the child and the position changed.
    pub fn mutate(&self, a: &Architecture, rng: &mut Rng) -> (Architecture, Option<usize>) {
        let movable: Vec<usize> = (0..self.len()).filter(|&i| self.decisions[i].options.len() > 1).collect();
        let mut child = a.clone();
        if movable.is_empty() {
            return (child, None);
        }
        let pos = movable[rng.random_range(0..movable.len())];
        let k = self.decisions[pos].options.len();
        let shift = rng.random_range(1..k);
        child.choices[pos] = (a.choices[pos] + shift) % k;
        (child, Some(pos))
    }

    /// Layer-wise mix: the child starts as `a`, and each position
    /// independently takes `b`'s option with probability `p`. Hyperparameters
    /// come from `a`. Returns the child and, per position, whether it came
    /// from `b`.
    pub fn mix(&self, a: &Architecture, b: &Architecture, p: f64, rng: &mut Rng) -> (Architecture, Vec<bool>) {
        let mut child = a.clone();
        let mut from_b = vec![false; self.len()];
        for (i, taken) in from_b.iter_mut().enumerate() {
            if rng.random_bool(p.clamp(0.0, 1.0)) {
                child.choices[i] = b.choices[i];
                *taken = true;
            }
        }
        (child, from_b)
    }

    /// The canonical text of an architecture. NAS-Bench-201 cells use the
    /// benchmark's cell string; other spaces join option names with `,`.
    /// Hyperparameters, if any, follow after `;` as `name=value` pairs.
    pub fn canonical(&self, a: &Architecture) -> String {
        let mut s = String::new();
        match self.kind {
            SpaceKind::Nb201 => {
                s.push('|');
                for (e, &(from, _to)) in NB201_EDGES.iter().enumerate() {
                    if e > 0 && from == 0 {
                        s.push_str("+|");
                    }
                    let _ = write!(s, "{}~{}|", self.decisions[e].options[a.choices[e]], from);
                }
            }
            SpaceKind::Sequence => {
                for (i, (d, &c)) in self.decisions.iter().zip(&a.choices).enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(&d.options[c]);
                }
            }
        }
        for (i, (h, v)) in self.hyperparameters.iter().zip(&a.hyper).enumerate() {
            s.push(if i == 0 { ';' } else { ',' });
            let _ = write!(s, "{}={}", h.name, v);
        }
        s
    }

    /// A stable 64-bit hash of the canonical string.
    pub fn hash(&self, a: &Architecture) -> u64 {
        xxhash_rust::xxh3::xxh3_64(self.canonical(a).as_bytes())
    }

    /// Parses a canonical string (see [`Space::canonical`]).
    pub fn parse(&self, text: &str) -> Result<Architecture, SpaceError> {
        let err = |reason: String| SpaceError::Parse { text: text.to_string(), reason };
        let (arch_part, hyper_part) = match text.split_once(';') {
            Some((a, h)) => (a, Some(h)),
            None => (text, None),
        };
        let names: Vec<&str> = match self.kind {
            SpaceKind::Nb201 => {
                let body = arch_part
                    .trim()
                    .strip_prefix('|')
                    .and_then(|s| s.strip_suffix('|'))
                    .ok_or_else(|| err("a cell string starts and ends with `|`".into()))?;
                let nodes: Vec<&str> = body.split("|+|").collect();
                if nodes.len() != 3 {
                    return Err(err(format!("expected 3 nodes separated by `|+|`, found {}", nodes.len())));
                }
                let mut names = Vec::new();
                for (node, text) in nodes.iter().enumerate() {
                    let edges: Vec<&str> = text.split('|').collect();
                    if edges.len() != node + 1 {
                        return Err(err(format!("node {} needs {} inputs, found {}", node + 1, node + 1, edges.len())));
                    }
                    for (j, e) in edges.iter().enumerate() {
                        let (op, from) = e.split_once('~').ok_or_else(|| err(format!("edge `{e}` is not `op~input`")))?;
                        if from != j.to_string() {
                            return Err(err(format!("edge `{e}` of node {} should read from node {j}", node + 1)));
                        }
                        names.push(op);
                    }
                }
                names
            }
            SpaceKind::Sequence => arch_part.split(',').map(str::trim).collect(),
        };
        if names.len() != self.len() {
            return Err(SpaceError::Length { expected: self.len(), got: names.len() });
        }
        let mut choices = Vec::with_capacity(names.len());
        for (d, name) in self.decisions.iter().zip(names) {
            match d.options.iter().position(|o| o == name) {
                Some(i) => choices.push(i),
                None => {
                    return Err(SpaceError::UnknownOption {
                        position: d.name.clone(),
                        option: name.to_string(),
                        known: d.options.join(", "),
                    })
                }
            }
        }
        let hyper = self.parse_hyper(hyper_part, &err)?;
        let a = Architecture { choices, hyper };
        self.validate(&a)?;
        Ok(a)
    }

    fn parse_hyper(&self, text: Option<&str>, err: &dyn Fn(String) -> SpaceError) -> Result<Vec<f64>, SpaceError> {
        let pairs: Vec<&str> = text.map(|t| t.split(',').collect()).unwrap_or_default();
        if pairs.len() != self.hyperparameters.len() {
            return Err(SpaceError::HyperLength { expected: self.hyperparameters.len(), got: pairs.len() });
        }
        self.hyperparameters
            .iter()
            .zip(pairs)
            .map(|(h, pair)| {
                let (name, value) = pair.split_once('=').ok_or_else(|| err(format!("`{pair}` is not `name=value`")))?;
                if name.trim() != h.name {
                    return Err(err(format!("expected hyperparameter `{}`, found `{name}`", h.name)));
                }
                value.trim().parse::<f64>().map_err(|e| err(format!("`{value}`: {e}")))
            })
            .collect()
    }

    /// Parses option indices: comma-separated (`0,2,1`), or a plain digit
    /// string (`021`) when every position has at most 10 options.
    pub fn parse_indices(&self, text: &str) -> Result<Architecture, SpaceError> {
        let err = |reason: String| SpaceError::Parse { text: text.to_string(), reason };
        let t = text.trim();
        let choices: Vec<usize> = if t.contains(',') {
            t.split(',')
                .map(|x| x.trim().parse::<usize>().map_err(|e| err(format!("`{x}` is not an option index: {e}"))))
                .collect::<Result<_, _>>()?
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) && self.num_options().iter().all(|&k| k <= 10) {
            t.bytes().map(|b| (b - b'0') as usize).collect()
        } else if let Ok(i) = t.parse::<usize>() {
            vec![i]
        } else {
            return Err(err("expected option indices, comma-separated or as a digit string".into()));
        };
        if !self.hyperparameters.is_empty() {
            return Err(err("option indices cannot carry hyperparameter values".into()));
        }
        let a = Architecture::new(choices);
        self.validate(&a)?;
        Ok(a)
    }

    /// Parses either form: the canonical string, else option indices.
    pub fn parse_any(&self, text: &str) -> Result<Architecture, SpaceError> {
        match self.parse(text) {
            Ok(a) => Ok(a),
            // Text that can only be option indices gets the indices' error.
            Err(first) => self.parse_indices(text).map_err(|e| {
                if text.trim().bytes().all(|b| b.is_ascii_digit() || b == b',' || b == b' ') {
                    e
                } else {
                    first
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};
    use rand::SeedableRng;

    fn spaces() -> Vec<Space> {
        let custom = SpaceSpec::Custom {
            decisions: vec![
                Decision { name: "a".into(), options: vec!["x".into()] },
                Decision { name: "b".into(), options: vec!["p".into(), "q".into(), "r".into()] },
                Decision { name: "c".into(), options: (0..12).map(|i| format!("o{i}")).collect() },
            ],
            hyperparameters: vec![
                Hyperparameter { name: "lr".into(), kind: HpKind::Float, low: 1e-4, high: 1.0, log: true },
                Hyperparameter { name: "width".into(), kind: HpKind::Int, low: 8.0, high: 64.0, log: false },
            ],
        }
        .build()
        .unwrap();
        vec![Space::sequence(20, 7), Space::nb201(), custom]
    }

    #[test]
    fn nb201_string_round_trips() {
        let s = Space::nb201();
        let text = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|";
        let a = s.parse(text).unwrap();
        assert_eq!(a.choices, vec![3, 3, 4, 1, 3, 1]);
        assert_eq!(s.canonical(&a), text);
    }

    #[test]
    fn nb201_rejects_bad_strings() {
        let s = Space::nb201();
        assert!(s.parse("|nor_conv_3x3~0|").is_err());
        let e = s.parse("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|").unwrap_err();
        assert!(e.to_string().contains("conv"), "{e}");
        assert!(s.parse("|none~0|+|none~1|none~1|+|none~0|none~1|none~2|").is_err());
    }

    #[test]
    fn indices_parse_both_ways() {
        let s = Space::nb201();
        assert_eq!(s.parse_indices("3,3,4,1,3,1").unwrap().choices, vec![3, 3, 4, 1, 3, 1]);
        assert_eq!(s.parse_indices("334131").unwrap().choices, vec![3, 3, 4, 1, 3, 1]);
        assert!(matches!(s.parse_indices("334135"), Err(SpaceError::OptionOutOfRange { .. })));
        assert!(matches!(s.parse_indices("33413"), Err(SpaceError::Length { .. })));
    }

    #[test]
    fn stratified_sampling_balances_each_position() {
        let s = Space::sequence(5, 4);
        let mut rng = Rng::seed_from_u64(1);
        let pop = s.sample_stratified(10, &mut rng);
        for p in 0..5 {
            let mut counts = [0; 4];
            for a in &pop {
                counts[a.choices[p]] += 1;
            }
            assert!(counts.iter().all(|&c| c == 2 || c == 3), "{counts:?}");
        }
    }

    #[test]
    fn space_spec_rejects_unknown_keys() {
        let e = toml::from_str::<SpaceSpec>("kind = \"sequence\"\nlength = 3\nnum_option = 2\n").unwrap_err();
        assert!(e.to_string().contains("num_option"), "{e}");
    }

    proptest! {
        #[test]
        fn samples_are_valid_and_round_trip(seed in any::<u64>()) {
            let mut rng = Rng::seed_from_u64(seed);
            for s in spaces() {
                let a = s.sample(&mut rng);
                prop_assert!(s.validate(&a).is_ok());
                prop_assert_eq!(&s.parse(&s.canonical(&a)).unwrap(), &a);
                let json = serde_json::to_string(&a).unwrap();
                prop_assert_eq!(&serde_json::from_str::<Architecture>(&json).unwrap(), &a);
                if s.hyperparameters().is_empty() {
                    let idx = a.choices.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",");
                    prop_assert_eq!(&s.parse_indices(&idx).unwrap(), &a);
                }
            }
        }

        #[test]
        fn mutation_changes_exactly_one_position(seed in any::<u64>()) {
            let mut rng = Rng::seed_from_u64(seed);
            for s in spaces() {
                let a = s.sample(&mut rng);
                let (b, pos) = s.mutate(&a, &mut rng);
                prop_assert!(s.validate(&b).is_ok());
                let diff: Vec<usize> = (0..s.len()).filter(|&i| a.choices[i] != b.choices[i]).collect();
                prop_assert_eq!(diff, pos.into_iter().collect::<Vec<_>>());
            }
        }

        #[test]
        fn mixing_stays_in_space_and_takes_parents_options(seed in any::<u64>(), p in 0.0f64..=1.0) {
            let mut rng = Rng::seed_from_u64(seed);
            for s in spaces() {
                let a = s.sample(&mut rng);
                let b = s.sample(&mut rng);
                let (c, from_b) = s.mix(&a, &b, p, &mut rng);
                prop_assert!(s.validate(&c).is_ok());
                for (i, &taken) in from_b.iter().enumerate() {
                    prop_assert_eq!(c.choices[i], if taken { b.choices[i] } else { a.choices[i] });
                }
                prop_assert_eq!(&c.hyper, &a.hyper);
            }
        }

        /// Random spaces (sequence, custom, NB201; 1–8 positions of 1–12
        /// options with random names; 0–3 float or int hyperparameters with
        /// random bounds, linear or log) survive JSON unchanged, and the copy
        /// reads and writes architectures exactly as the original does.
        #[test]
        fn space_json_round_trips(s in random_space(), seed in any::<u64>()) {
            let json = serde_json::to_string(&s).unwrap();
            let back = serde_json::from_str::<Space>(&json).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
            let mut rng = Rng::seed_from_u64(seed);
            for _ in 0..4 {
                let a = s.sample(&mut rng);
                prop_assert!(back.validate(&a).is_ok());
                let text = s.canonical(&a);
                prop_assert_eq!(&back.canonical(&a), &text);
                prop_assert_eq!(back.hash(&a), s.hash(&a));
                prop_assert_eq!(back.parse(&text), s.parse(&text));
            }
        }
    }

    /// The random spaces of `space_json_round_trips`, built through
    /// [`SpaceSpec`] as a config declares them.
    fn random_space() -> impl proptest::strategy::Strategy<Value = Space> {
        use proptest::collection::{btree_set, vec};
        use proptest::prelude::Strategy;
        // Names as `valid_name` allows; decision and hyperparameter names
        // start differently, so they never collide with each other or with
        // the generated `pos<i>` / `edge<ij>` names.
        let names = |first: &'static str, n: std::ops::Range<usize>| {
            btree_set(proptest::string::string_regex(&format!("{first}[A-Za-z0-9_.-]{{0,9}}")).unwrap(), n)
                .prop_map(|s| s.into_iter().collect::<Vec<String>>())
                .prop_shuffle()
        };
        let hyper = (any::<bool>(), any::<bool>(), -1e3f64..1e3, 1.0f64..1e4);
        (1usize..9, 0usize..4)
            .prop_flat_map(move |(len, n_hyper)| {
                (
                    0u8..3,
                    names("[a-z]", len..len + 1),
                    vec(names("[A-Za-z0-9]", 1..13), len),
                    names("[_-]", n_hyper..n_hyper + 1),
                    vec(hyper.clone(), n_hyper),
                )
            })
            .prop_map(|(kind, decision_names, options, hyper_names, hyper)| {
                let hyperparameters = hyper_names
                    .into_iter()
                    .zip(hyper)
                    .map(|(name, (int, log, base, span))| {
                        let low = if log { base.abs() + 1e-3 } else { base };
                        Hyperparameter { name, kind: if int { HpKind::Int } else { HpKind::Float }, low, high: low + span, log }
                    })
                    .collect();
                let spec = match kind {
                    0 => {
                        SpaceSpec::Sequence { length: options.len(), num_options: None, options: Some(options[0].clone()), hyperparameters }
                    }
                    1 => SpaceSpec::Custom {
                        decisions: decision_names.into_iter().zip(options).map(|(name, options)| Decision { name, options }).collect(),
                        hyperparameters,
                    },
                    _ => SpaceSpec::Nb201 { hyperparameters },
                };
                spec.build().unwrap_or_else(|e| panic!("{spec:?}: {e}"))
            })
    }
}
