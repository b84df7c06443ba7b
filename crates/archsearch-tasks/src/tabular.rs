//! Tabular tasks: the answer for every architecture is a row of a table.
//!
//! [`TableTask::nb201`] is NAS-Bench-201 (all 15,625 cells, embedded in the
//! binary from `data/nasbench201.csv`; see `data/README.md` for its columns
//! and licence). [`TableTask::from_csv`] reads any CSV whose architecture
//! column holds, for a declared space, either the space's canonical string or
//! the option index of each position (`0,2,1` or `021`).
//!
//! A query may carry a simulated cost (`cost_per_query` seconds, or a cost
//! column), so budgets can be counted in queries or in simulated seconds.

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
    pub fn from_reader(name: &str, reader: impl std::io::Read, space: Space, arch_column: &str, query: TableQuery) -> Result<Self, TaskError> {
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
        let header = rdr.headers().map_err(|e| data_err(e.to_string()))?.clone();
        let arch_idx = header
            .iter()
            .position(|h| h == arch_column)
            .ok_or_else(|| data_err(format!("no architecture column `{arch_column}` in the header")))?;
        let columns: Vec<String> = header.iter().enumerate().filter(|(i, _)| *i != arch_idx).map(|(_, h)| h.to_string()).collect();
        let col = |c: &str, what: &str| {
            columns.iter().position(|h| h == c).ok_or_else(|| {
                data_err(format!("{what} column `{c}` is not in the table (columns: {})", columns.join(", ")))
            })
        };
        let search = col(&query.search_column, "search")?;
        let report = col(&query.report_column, "report")?;
        let cost = query.cost_column.as_deref().map(|c| col(c, "cost")).transpose()?;
        let mut rows = HashMap::new();
        let mut values = Vec::new();
        for (i, record) in rdr.records().enumerate() {
            let record = record.map_err(|e| data_err(e.to_string()))?;
            let line = record.position().map(|p| p.line()).unwrap_or(i as u64 + 2);
            let text = &record[arch_idx];
            let arch = space.parse_any(text).map_err(|e| data_err(format!("line {line}: {e}")))?;
            let key = key(&radix, &arch);
            if rows.insert(key, (values.len() / columns.len().max(1)) as u32).is_some() {
                return Err(data_err(format!("line {line}: architecture `{text}` appears twice")));
            }
            for (j, field) in record.iter().enumerate().filter(|(j, _)| *j != arch_idx) {
                let v: f64 = field.parse().map_err(|_| {
                    data_err(format!("line {line}, column `{}`: `{field}` is not a number", &header[j]))
                })?;
                values.push(v);
            }
        }
        if rows.is_empty() {
            return Err(data_err("the table has no rows".into()));
        }
        Ok(TableTask { space, radix, rows, columns, values, search, report, cost, cost_per_query: query.cost_per_query, query })
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

    /// Every architecture of the table with its row, in table order.
    pub fn column_values(&self, column: &str) -> Option<Vec<f64>> {
        let c = self.columns.iter().position(|h| h == column)?;
        let n = self.columns.len();
        let mut order: Vec<(u32, u64)> = self.rows.iter().map(|(k, r)| (*r, *k)).collect();
        order.sort_unstable();
        Some(order.iter().map(|(r, _)| self.values[*r as usize * n + c]).collect())
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
    fn evaluate(&self, arch: &Architecture, _ctx: &mut TrialContext<'_>) -> Result<Evaluation, TaskError> {
        self.space.validate(arch).map_err(|e| TaskError::Invalid(e.to_string()))?;
        let row = self.row(arch).ok_or_else(|| TaskError::NotInTable(self.space.canonical(arch)))?;
        let value = row[self.search];
        if !value.is_finite() {
            return Err(TaskError::Failed(format!("`{}` is {value} for this architecture", self.query.search_column)));
        }
        let mut metrics = BTreeMap::new();
        metrics.insert(self.columns[self.search].clone(), value);
        metrics.insert(self.columns[self.report].clone(), row[self.report]);
        let cost = self.cost_per_query + self.cost.map_or(0.0, |c| row[c]);
        Ok(Evaluation { value, metrics, cost })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archsearch_core::space::SpaceSpec;

    fn q(search: &str, report: &str) -> TableQuery {
        TableQuery { search_column: search.into(), report_column: report.into(), cost_per_query: 0.0, cost_column: None }
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
        ];
        for (csv, needle) in cases {
            let e = TableTask::from_reader("bad.csv", csv.as_bytes(), space(), "arch", q("acc", "acc")).err().unwrap();
            let msg = e.to_string();
            assert!(msg.starts_with("bad.csv:") && msg.contains(needle), "{csv:?}: {msg}");
        }
    }
}
