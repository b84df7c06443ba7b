//! Tabular tasks: the answer for every architecture is a row of a table.
//!
//! [`TableTask::nb201`] is NAS-Bench-201 (all 15,625 cells, embedded in the
//! binary from `data/nasbench201.csv`; see `data/README.md` for its columns
//! and licence). [`TableTask::from_csv`] reads any CSV whose architecture
//! column holds, for a declared space, either the space's canonical string or
//! the option index of each position (`0,2,1` or `021`).
//!
//! A query may carry a simulated cost (`cost_per_query` seconds, a cost
//! column, and `cost_per_step` per step of budget), so budgets can be
//! counted in queries or in simulated seconds.
//!
//! A table may also have a fidelity axis: columns measured at increasing
//! budgets (NAS-Bench-201: validation accuracy after 12 and after 200
//! epochs). A multi-fidelity strategy asks for one of those budgets and is
//! charged `cost_per_step × budget`: a table cannot resume a run, so a trial
//! promoted from 12 to 200 epochs pays for the 200-epoch run in full.

use std::collections::{BTreeMap, HashMap};

use archsearch_core::{Architecture, Space};

use crate::{Evaluation, Task, TaskError, TrialContext};

/// The NAS-Bench-201 table shipped with archsearch.
pub const NB201_CSV: &str = include_str!("../../../data/nasbench201.csv");

/// How a table task scores a query.
#[derive(Debug, Clone, PartialEq)]
pub struct TableQuery {
    /// Column the search optimises (e.g. `c10valid_valid12`).
    pub search_column: String,
    /// Column reported for the chosen architecture (e.g. `c10_test200`).
    pub report_column: String,
    /// Simulated seconds per query.
    pub cost_per_query: f64,
    /// Optional column of simulated seconds per architecture (added to `cost_per_query`).
    pub cost_column: Option<String>,
    /// Simulated seconds per step of budget (epoch), charged for the
    /// budget of the evaluated column.
    pub cost_per_step: f64,
    /// The fidelity axis: `(budget, column)` pairs.
    pub fidelities: Vec<(u64, String)>,
}

impl TableQuery {
    /// A query of `search` reporting `report`, with no cost and no fidelities.
    pub fn new(search: &str, report: &str) -> Self {
        TableQuery {
            search_column: search.into(),
            report_column: report.into(),
            cost_per_query: 0.0,
            cost_column: None,
            cost_per_step: 0.0,
            fidelities: Vec::new(),
        }
    }
}

/// NAS-Bench-201's fidelity axis on the CIFAR-10-valid split: validation
/// accuracy after 12 and after 200 epochs.
pub fn nb201_fidelities() -> Vec<(u64, String)> {
    vec![(12, "c10valid_valid12".into()), (200, "c10valid_valid200".into())]
}

/// The header of a CSV table: its column names (cheap; the rows are not read).
pub fn csv_columns(name: &str, reader: impl std::io::Read) -> Result<Vec<String>, TaskError> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(reader);
    let header = rdr.headers().map_err(|e| TaskError::Data { path: name.to_string(), message: e.to_string() })?;
    Ok(header.iter().map(str::to_string).collect())
}

/// The column names of the embedded NAS-Bench-201 table.
pub fn nb201_columns() -> Vec<String> {
    csv_columns("nasbench201.csv (embedded)", NB201_CSV.as_bytes()).unwrap_or_default()
}

/// A task backed by a table with one row per architecture.
pub struct TableTask {
    space: Space,
    radix: Vec<u64>,
    rows: HashMap<u64, u32>,
    columns: Vec<String>,
    /// Row-major values, `columns.len()` per row.
    values: Vec<f64>,
    search: usize,
    report: usize,
    cost: Option<usize>,
    cost_per_query: f64,
    /// `(budget, column index)` of the fidelity axis, by budget.
    fidelities: Vec<(u64, usize)>,
    /// The budget of the search column, if it is on the fidelity axis.
    search_budget: Option<u64>,
    /// The median of the cost column's finite values (what a failed query costs).
    median_cost: Option<f64>,
    query: TableQuery,
}

impl TableTask {
    /// NAS-Bench-201 from the embedded table.
    pub fn nb201(query: TableQuery) -> Result<Self, TaskError> {
        Self::from_reader("nasbench201.csv (embedded)", NB201_CSV.as_bytes(), Space::nb201(), "arch", query)
    }

    /// Any CSV file whose `arch_column` encodes architectures of `space`.
    pub fn from_csv(path: &std::path::Path, space: Space, arch_column: &str, query: TableQuery) -> Result<Self, TaskError> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| TaskError::Data { path: name.clone(), message: e.to_string() })?;
        Self::from_reader(&name, file, space, arch_column, query)
    }

    /// Reads a table from any reader; `name` is used in error messages.
    pub fn from_reader(
        name: &str,
        reader: impl std::io::Read,
        space: Space,
        arch_column: &str,
        query: TableQuery,
    ) -> Result<Self, TaskError> {
        let data_err = |message: String| TaskError::Data { path: name.to_string(), message };
        if space.cardinality() > (u64::MAX / 2) as f64 {
            return Err(data_err("the space is too large to index as a table".into()));
        }
        let mut radix = Vec::with_capacity(space.len());
        let mut r = 1u64;
        for k in space.num_options() {
            radix.push(r);
            r *= k as u64;
        }
        let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(reader);
        let header = rdr.headers().map_err(|e| data_err(csv_message(&e)))?.clone();
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(data_err("the file is empty: no header line".into()));
        }
        for (i, h) in header.iter().enumerate() {
            if header.iter().skip(i + 1).any(|g| g == h) {
                return Err(data_err(format!("line 1: column `{h}` appears twice in the header")));
            }
        }
        let arch_idx = header
            .iter()
            .position(|h| h == arch_column)
            .ok_or_else(|| data_err(format!("no architecture column `{arch_column}` in the header")))?;
        let columns: Vec<String> = header.iter().enumerate().filter(|(i, _)| *i != arch_idx).map(|(_, h)| h.to_string()).collect();
        let col = |c: &str, what: &str| {
            columns
                .iter()
                .position(|h| h == c)
                .ok_or_else(|| data_err(format!("{what} column `{c}` is not in the table (columns: {})", columns.join(", "))))
        };
        let search = col(&query.search_column, "search")?;
        let report = col(&query.report_column, "report")?;
        let cost = query.cost_column.as_deref().map(|c| col(c, "cost")).transpose()?;
        let mut fidelities = query.fidelities.iter().map(|(b, c)| Ok((*b, col(c, "fidelity")?))).collect::<Result<Vec<_>, TaskError>>()?;
        fidelities.sort_unstable();
        if fidelities.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(data_err("two fidelity columns have the same budget".into()));
        }
        let search_budget = fidelities.iter().find(|(_, c)| *c == search).map(|(b, _)| *b);
        let mut rows = HashMap::new();
        let mut values = Vec::new();
        for (i, record) in rdr.records().enumerate() {
            let record = record.map_err(|e| data_err(csv_message(&e)))?;
            let line = record.position().map(|p| p.line()).unwrap_or(i as u64 + 2);
            let text = &record[arch_idx];
            let arch = space.parse_any(text).map_err(|e| data_err(format!("line {line}: {e}")))?;
            let key = key(&radix, &arch);
            if rows.insert(key, (values.len() / columns.len().max(1)) as u32).is_some() {
                return Err(data_err(format!("line {line}: architecture `{text}` appears twice")));
            }
            for (j, field) in record.iter().enumerate().filter(|(j, _)| *j != arch_idx) {
                let v: f64 =
                    field.parse().map_err(|_| data_err(format!("line {line}, column `{}`: `{field}` is not a number", &header[j])))?;
                values.push(v);
            }
        }
        if rows.is_empty() {
            return Err(data_err("the table has no rows".into()));
        }
        let median_cost = match cost {
            None => None,
            Some(c) => {
                let n = columns.len();
                let mut finite: Vec<f64> = values.iter().skip(c).step_by(n).copied().filter(|v| v.is_finite()).collect();
                if finite.is_empty() {
                    return Err(data_err(format!("cost column `{}` has no finite value", columns[c])));
                }
                finite.sort_by(f64::total_cmp);
                Some(finite[finite.len() / 2])
            }
        };
        Ok(TableTask {
            space,
            radix,
            rows,
            columns,
            values,
            search,
            report,
            cost,
            cost_per_query: query.cost_per_query,
            fidelities,
            search_budget,
            median_cost,
            query,
        })
    }

    /// Number of architectures in the table.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    pub fn query(&self) -> &TableQuery {
        &self.query
    }
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    fn row(&self, arch: &Architecture) -> Option<&[f64]> {
        let n = self.columns.len();
        self.rows.get(&key(&self.radix, arch)).map(|&r| &self.values[r as usize * n..(r as usize + 1) * n])
    }

    /// The value of `column` for `arch`, if the table has both.
    pub fn lookup(&self, arch: &Architecture, column: &str) -> Option<f64> {
        let c = self.columns.iter().position(|h| h == column)?;
        self.row(arch).map(|r| r[c])
    }

    /// `(search value, report value)` for `arch`: the fast path of replays.
    pub fn search_and_report(&self, arch: &Architecture) -> Option<(f64, f64)> {
        self.row(arch).map(|r| (r[self.search], r[self.report]))
    }

    /// The column and cost of an evaluation up to `budget` (`None`: the search column).
    fn column_at(&self, budget: Option<u64>) -> Result<(usize, f64), TaskError> {
        let (column, steps) = match budget {
            None => (self.search, self.search_budget),
            Some(b) => match self.fidelities.iter().find(|(fb, _)| *fb == b) {
                Some(&(_, c)) => (c, Some(b)),
                None => return Err(self.no_budget(b)),
            },
        };
        Ok((column, self.cost_per_query + self.query.cost_per_step * steps.unwrap_or(0) as f64))
    }

    fn no_budget(&self, b: u64) -> TaskError {
        if self.fidelities.is_empty() {
            return TaskError::Invalid(format!("budget {b}: this table has no fidelity axis (set `fidelities`)"));
        }
        let have: Vec<String> = self.fidelities.iter().map(|(b, c)| format!("{b} (`{}`)", self.columns[*c])).collect();
        TaskError::Invalid(format!("budget {b} is not a fidelity of this table (it has {})", have.join(", ")))
    }

    /// `(value, report value, cost)` of `arch` evaluated up to `budget`
    /// (`None`: the search column): the fast path of replays.
    pub fn value_at(&self, arch: &Architecture, budget: Option<u64>) -> Result<Option<(f64, f64, f64)>, TaskError> {
        let (column, cost) = self.column_at(budget)?;
        Ok(self.row(arch).map(|r| (r[column], r[self.report], cost + self.cost.map_or(0.0, |c| r[c]))))
    }

    /// Every architecture of the table with its row, in table order.
    pub fn column_values(&self, column: &str) -> Option<Vec<f64>> {
        let c = self.columns.iter().position(|h| h == column)?;
        let n = self.columns.len();
        let mut order: Vec<(u32, u64)> = self.rows.iter().map(|(k, r)| (*r, *k)).collect();
        order.sort_unstable();
        Some(order.iter().map(|(r, _)| self.values[*r as usize * n + c]).collect())
    }
}

/// A CSV reader's error, led by the line it is about.
fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { pos: Some(pos), expected_len, len } => {
            format!("line {}: {len} fields, the header has {expected_len}", pos.line())
        }
        csv::ErrorKind::Utf8 { pos: Some(pos), err } => {
            format!("line {}, field {}: not valid UTF-8", pos.line(), err.field() + 1)
        }
        _ => e.to_string(),
    }
}

fn key(radix: &[u64], arch: &Architecture) -> u64 {
    arch.choices.iter().zip(radix).map(|(&c, &r)| c as u64 * r).sum()
}

impl Task for TableTask {
    fn space(&self) -> &Space {
        &self.space
    }
    fn objective(&self) -> &str {
        &self.query.search_column
    }
    fn check_budget(&self, budget: u64) -> Result<(), TaskError> {
        self.column_at(Some(budget)).map(|_| ())
    }
    fn evaluate(&self, arch: &Architecture, ctx: &mut TrialContext<'_>) -> Result<Evaluation, TaskError> {
        self.space.validate(arch).map_err(|e| TaskError::Invalid(e.to_string()))?;
        let (column, cost) = self.column_at(ctx.budget)?;
        let row = self.row(arch).ok_or_else(|| TaskError::NotInTable(self.space.canonical(arch)))?;
        let value = row[column];
        let row_cost = self.cost.map_or(0.0, |c| row[c]);
        if !row_cost.is_finite() {
            return Err(TaskError::Failed(format!(
                "cost column `{}` is {row_cost} for this architecture",
                self.columns[self.cost.unwrap_or(0)]
            )));
        }
        if let Some(b) = ctx.budget.filter(|_| value.is_finite()) {
            ctx.reporter.report(b, value);
        }
        // A NaN value is returned as it is: the trial fails, charged its cost,
        // with its metrics (NaN included) kept.
        let mut metrics = BTreeMap::new();
        metrics.insert(self.columns[column].clone(), value);
        metrics.insert(self.columns[self.report].clone(), row[self.report]);
        Ok(Evaluation { value, metrics, cost: cost + row_cost })
    }

    /// A query that failed (not in the table, NaN cost) is charged the
    /// query's cost, and the median of the cost column for its row's part.
    fn failure_cost(&self, _arch: &Architecture, budget: Option<u64>, _seconds: f64) -> f64 {
        let base = self.column_at(budget).map(|(_, c)| c).unwrap_or(self.cost_per_query);
        base + self.median_cost.unwrap_or(0.0)
    }

    fn charges_cost(&self) -> bool {
        self.cost_per_query > 0.0 || self.query.cost_per_step > 0.0 || self.median_cost.is_some_and(|c| c > 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archsearch_core::space::SpaceSpec;

    fn q(search: &str, report: &str) -> TableQuery {
        TableQuery::new(search, report)
    }

    #[test]
    fn fidelities_pick_the_column_of_the_budget_and_charge_per_step() {
        let query = TableQuery { cost_per_step: 1.0, fidelities: nb201_fidelities(), ..q("c10valid_valid200", "c10_test200") };
        let t = TableTask::nb201(query).unwrap();
        let arch = Architecture::new(vec![3, 3, 1, 0, 2, 4]);
        let at12 = t.value_at(&arch, Some(12)).unwrap().unwrap();
        assert_eq!((at12.0, at12.2), (t.lookup(&arch, "c10valid_valid12").unwrap(), 12.0));
        let full = t.value_at(&arch, None).unwrap().unwrap();
        assert_eq!((full.0, full.2), (t.lookup(&arch, "c10valid_valid200").unwrap(), 200.0));
        let e = t.check_budget(36).unwrap_err().to_string();
        assert!(e.contains("budget 36") && e.contains("12 (`c10valid_valid12`)"), "{e}");
        let mut values = Vec::new();
        struct Keep<'a>(&'a mut Vec<(u64, f64)>);
        impl crate::Reporter for Keep<'_> {
            fn report(&mut self, step: u64, value: f64) {
                self.0.push((step, value));
            }
        }
        let mut keep = Keep(&mut values);
        let mut ctx = TrialContext { budget: Some(12), ..TrialContext::detached(0, 0, &mut keep) };
        let ev = t.evaluate(&arch, &mut ctx).unwrap();
        assert_eq!((ev.value, ev.cost), (at12.0, 12.0));
        assert_eq!(values, vec![(12, at12.0)]);
    }

    #[test]
    fn nb201_has_every_cell_and_the_known_optimum() {
        let t = TableTask::nb201(q("c10valid_valid200", "c10_test200")).unwrap();
        assert_eq!(t.len(), 15625);
        let best = Space::nb201()
            .parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|")
            .unwrap();
        let (_, report) = t.search_and_report(&best).unwrap();
        assert!(report > 90.0);
        let all = t.column_values("c10_test200").unwrap();
        let max = all.iter().cloned().fold(f64::MIN, f64::max);
        assert!((max - 94.37).abs() < 0.01, "max {max}");
    }

    fn space() -> Space {
        toml::from_str::<SpaceSpec>("kind = \"sequence\"\nlength = 3\noptions = [\"a\", \"b\"]\n").unwrap().build().unwrap()
    }

    #[test]
    fn table_reads_every_encoding() {
        let csv = "arch,acc,t\n\"a,a,a\",1,10\n\"0,0,1\",2,10\n010,3,10\n";
        let t = TableTask::from_reader("x.csv", csv.as_bytes(), space(), "arch", q("acc", "t")).unwrap();
        assert_eq!(t.lookup(&Architecture::new(vec![0, 0, 1]), "acc"), Some(2.0));
        assert_eq!(t.lookup(&Architecture::new(vec![0, 1, 0]), "acc"), Some(3.0));
        let e = t.evaluate(&Architecture::new(vec![1, 1, 1]), &mut TrialContext::detached(0, 0, &mut crate::NoReport)).unwrap_err();
        assert!(e.to_string().contains("b,b,b"), "{e}");
    }

    /// A NaN value fails its trial with the query's cost; a NaN cost fails
    /// it charged the cost column's median; a table of NaN costs is refused.
    #[test]
    fn nan_values_and_nan_costs_fail_their_trial_at_a_cost() {
        let csv = "arch,acc,t,cost\n\"a,a,a\",NaN,NaN,10\n\"a,a,b\",2,NaN,NaN\n\"a,b,a\",3,1,30\n";
        let query = TableQuery { cost_column: Some("cost".into()), ..q("acc", "t") };
        let t = TableTask::from_reader("x.csv", csv.as_bytes(), space(), "arch", query.clone()).unwrap();
        let ev = t.evaluate(&Architecture::new(vec![0, 0, 0]), &mut TrialContext::detached(0, 0, &mut crate::NoReport)).unwrap();
        assert!(ev.value.is_nan() && ev.metrics["t"].is_nan() && ev.cost == 10.0, "{ev:?}");
        let nan_cost = Architecture::new(vec![0, 0, 1]);
        let e = t.evaluate(&nan_cost, &mut TrialContext::detached(0, 0, &mut crate::NoReport)).unwrap_err();
        assert!(e.to_string().contains("cost column `cost` is NaN"), "{e}");
        assert_eq!(t.failure_cost(&nan_cost, None, 0.001), 30.0, "the median of 10 and 30 (the upper one)");
        assert!(t.charges_cost());
        let all_nan = "arch,acc,t,cost\n\"a,a,a\",1,1,NaN\n";
        let e = TableTask::from_reader("y.csv", all_nan.as_bytes(), space(), "arch", query).err().unwrap();
        assert!(e.to_string().contains("y.csv") && e.to_string().contains("no finite value"), "{e}");
        let free = TableTask::from_reader("z.csv", "arch,acc,t\n\"a,a,a\",1,1\n".as_bytes(), space(), "arch", q("acc", "t")).unwrap();
        assert!(!free.charges_cost(), "a table with no cost never spends a cost budget");
    }

    #[test]
    fn table_errors_name_file_and_line() {
        let cases = [
            ("arch,acc\n\"a,a,a\",1\n\"a,c,a\",2\n", "line 3"),
            ("arch,acc\n\"a,a,a\",1\n012,2\n", "line 3"),
            ("arch,acc\n\"a,a,a\",1\n\"a,a\",2\n", "line 3"),
            ("arch,acc\n\"a,a,a\",x\n", "column `acc`"),
            ("arch,acc\n\"a,a,a\",1\n000,1\n", "twice"),
            ("name,acc\n\"a,a,a\",1\n", "no architecture column"),
            ("arch,loss\n\"a,a,a\",1\n", "search column `acc`"),
            ("arch,acc\n\"a,a,a\",1\n\"a,a,b\"\n", "line 3: 1 fields, the header has 2"),
            ("arch,acc\n\"a,a,a\",1,7\n", "line 2: 3 fields, the header has 2"),
            ("", "empty"),
            ("arch,acc,acc\n\"a,a,a\",1,2\n", "column `acc` appears twice"),
            ("arch,acc\n", "no rows"),
        ];
        for (csv, needle) in cases {
            let e = TableTask::from_reader("bad.csv", csv.as_bytes(), space(), "arch", q("acc", "acc")).err().unwrap();
            let msg = e.to_string();
            assert!(msg.starts_with("bad.csv:") && msg.contains(needle), "{csv:?}: {msg}");
        }
        let e = TableTask::from_reader("bad.csv", &b"arch,acc\n\"a,a,a\",\xff\n"[..], space(), "arch", q("acc", "acc")).err().unwrap();
        assert!(e.to_string().contains("line 2, field 2: not valid UTF-8"), "{e}");
    }
}
