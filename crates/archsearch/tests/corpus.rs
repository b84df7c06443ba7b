//! A corpus of malformed inputs, each run through the `archsearch` binary:
//! study configs (`corpus/config/*.toml`, run as they are), CSV tables
//! (`corpus/csv/*.csv`, run as the `file` of a table study) and IDX data
//! sets (`corpus/idx/CASE/`, the files that replace their namesakes in a
//! copy of `corpus/idx/valid/`, run as the `data_dir` of a training study;
//! `corpus/idx/make_fixtures.py` writes them).
//!
//! Every case must exit non-zero without a panic, with an error that names
//! the file at fault and the field, key or line.

mod common;
use common::bin;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// One malformed input: its fixture (relative to `tests/corpus`) and what
/// its error must contain.
struct Case {
    fixture: &'static str,
    expect: &'static [&'static str],
}

const fn ok(fixture: &'static str, expect: &'static [&'static str]) -> Case {
    Case { fixture, expect }
}

/// The table of cases. The file name of a config or CSV fixture is always
/// expected too (configs: the config; CSV: the table; IDX: the expected
/// data file is listed).
const CASES: &[Case] = &[
    // TOML syntax.
    ok("config/syntax-unclosed-table.toml", &["line 3", "unclosed table"]),
    ok("config/syntax-two-values.toml", &["line 2", "trials = 10 20"]),
    ok("config/syntax-unterminated-string.toml", &["line 2", "name = \"abc"]),
    ok("config/syntax-duplicate-key.toml", &["line 3", "duplicate key"]),
    ok("config/empty.toml", &["missing field `task`"]),
    // Unknown keys, in every table.
    ok("config/unknown-table.toml", &["line 1", "studdy"]),
    ok("config/unknown-key-study.toml", &["line 3", "trails"]),
    ok("config/unknown-key-space.toml", &["[space]", "widht"]),
    ok("config/unknown-key-space-decision.toml", &["[space]", "`option`"]),
    ok("config/unknown-key-space-hyperparameter.toml", &["[space]", "logscale"]),
    ok("config/unknown-key-task-nb201.toml", &["[task]", "search_colum`"]),
    ok("config/unknown-key-task-nb201-fidelity.toml", &["[task]", "colum`"]),
    ok("config/unknown-key-task-table.toml", &["[task]", "arch_col`"]),
    ok("config/unknown-key-task-train.toml", &["[task]", "`epochs`"]),
    ok("config/unknown-key-task-network.toml", &["[task]", "chanels"]),
    ok("config/unknown-key-task-proxy.toml", &["[task]", "`epoch`"]),
    ok("config/unknown-key-task-optimizer.toml", &["[task]", "`learning_rate`"]),
    ok("config/unknown-key-strategy.toml", &["[strategy]", "populaton"]),
    ok("config/unknown-key-strategy-pbt.toml", &["[strategy]", "`members`"]),
    ok("config/unknown-key-strategy.toml", &["line 5", "populaton"]),
    // Wrong types.
    ok("config/wrong-type-study-trials.toml", &["line 2", "trials = \"ten\"", "expected u64"]),
    ok("config/wrong-type-study-seed.toml", &["line 2", "seed = -3"]),
    ok("config/wrong-type-study-direction.toml", &["line 2", "direction = \"up\"", "maximize"]),
    ok("config/wrong-type-study-trials-overflow.toml", &["line 2", "trials = 99999999999999999999"]),
    ok("config/wrong-type-space-length.toml", &["[space]", "expected usize"]),
    ok("config/wrong-type-space-length.toml", &["length", "expected usize"]),
    ok("config/wrong-type-task-valid-fraction.toml", &["[task]", "expected f64"]),
    ok("config/wrong-type-task-valid-fraction.toml", &["valid_fraction", "expected f64"]),
    ok("config/wrong-type-table-file.toml", &["[task]", "expected path string"]),
    ok("config/wrong-type-table-file.toml", &["file", "expected path string", "line 7"]),
    ok("config/wrong-type-strategy-population.toml", &["[strategy]", "expected usize"]),
    ok("config/wrong-type-strategy-population.toml", &["population", "expected usize"]),
    // Out-of-range values.
    ok("config/range-study-trials-zero.toml", &["[study]", "trials = 0"]),
    ok("config/range-study-workers-zero.toml", &["[study]", "workers = 0"]),
    ok("config/range-study-cost-negative.toml", &["[study]", "cost = -5"]),
    ok("config/range-space-length-zero.toml", &["[space]", "length = 0", "at least one position"]),
    ok("config/range-space-hyperparameter-bounds.toml", &["[space]", "`lr`", "low < high"]),
    ok("config/range-strategy-population-zero.toml", &["[strategy]", "`population`"]),
    ok("config/range-strategy-eta-one.toml", &["[strategy]", "eta = 1"]),
    ok("config/range-strategy-clip-negative.toml", &["[strategy]", "`clip`"]),
    ok("config/range-strategy-learning-rate-nan.toml", &["[strategy]", "`learning_rate`"]),
    ok("config/range-strategy-pbt-mix-probability.toml", &["[strategy]", "`mix_probability`"]),
    ok("config/range-task-proxy-epochs-zero.toml", &["[task.proxy]", "epochs"]),
    ok("config/range-task-proxy-fraction-zero.toml", &["[task.proxy]", "fraction = 0"]),
    ok("config/range-task-proxy-width-negative.toml", &["[task.proxy]", "width = -1"]),
    ok("config/range-task-target-epochs-zero.toml", &["[task.target]", "epochs"]),
    ok("config/range-task-lr-negative.toml", &["[task.optimizer]", "lr = -1"]),
    ok("config/range-task-threads-zero.toml", &["[task]", "threads"]),
    ok("config/range-task-valid-fraction.toml", &["[task]", "valid_fraction = 2"]),
    ok("config/range-task-nb201-search-column.toml", &["search_column", "`c10_nope`"]),
    // Missing required fields.
    ok("config/missing-task.toml", &["missing field `task`"]),
    ok("config/missing-strategy.toml", &["missing field `strategy`"]),
    ok("config/missing-strategy-kind.toml", &["[strategy]", "missing field `kind`"]),
    ok("config/missing-task-kind.toml", &["[task]", "missing field `kind`"]),
    ok("config/missing-space-kind.toml", &["[space]", "missing field `kind`"]),
    ok("config/missing-table-file.toml", &["[task]", "missing field `file`"]),
    ok("config/missing-table-search-column.toml", &["[task]", "missing field `search_column`"]),
    ok("config/missing-train-dataset.toml", &["[task]", "missing field `dataset`"]),
    ok("config/missing-train-network.toml", &["[task]", "missing field `network`"]),
    ok("config/missing-table-space.toml", &["[space]", "table task needs a [space]"]),
    ok("config/missing-train-space.toml", &["[space]", "training task needs a [space]"]),
    ok("config/nb201-resolution-not-multiple-of-4.toml", &["[task.proxy] resolution = 14", "multiple of 4"]),
    // Unknown kinds.
    ok("config/unknown-strategy-kind.toml", &["line 4", "hillclimb"]),
    ok("config/unknown-task-kind.toml", &["line 2", "imagenet"]),
    ok("config/unknown-space-kind.toml", &["line 2", "lattice"]),
    ok("config/unknown-network-kind.toml", &["[task]", "`resnet`"]),
    ok("config/unknown-optimizer.toml", &["[task]", "`rmsprop`"]),
    ok("config/unknown-dataset.toml", &["[task]", "`svhn`"]),
    ok("config/unknown-pbt-variant.toml", &["[strategy]", "`magic`"]),
    ok("config/unknown-macro-op.toml", &["[task]", "`pos0`", "`conv7x7`"]),
    ok("config/unknown-mlp-decision.toml", &["[task]", "`layer0.depth`"]),
    // CSV tables (space: 3 positions of `a`, `b`; search `acc`, report `final`).
    ok("csv/missing-arch-column.csv", &["arch_column = `arch` is not a column"]),
    ok("csv/missing-search-column.csv", &["search_column = `acc` is not a column"]),
    ok("csv/missing-report-column.csv", &["report_column = `final` is not a column"]),
    ok("csv/non-numeric-cell.csv", &["line 3", "column `acc`", "`x` is not a number"]),
    ok("csv/empty-cell.csv", &["line 3", "column `final`", "is not a number"]),
    ok("csv/too-few-fields.csv", &["line 3", "2 fields, the header has 3"]),
    ok("csv/too-many-fields.csv", &["line 3", "4 fields, the header has 3"]),
    ok("csv/unterminated-quote.csv", &["line 2", "1 fields, the header has 3"]),
    ok("csv/option-not-in-space.csv", &["line 3", "`pos1`", "`c`"]),
    ok("csv/too-short-architecture.csv", &["line 3", "2 positions, the space has 3"]),
    ok("csv/index-out-of-range.csv", &["line 3"]),
    ok("csv/index-out-of-range.csv", &["line 3", "option index 2 is out of range"]),
    ok("csv/duplicate-architecture.csv", &["line 3", "`a,a,a` appears twice"]),
    ok("csv/duplicate-column.csv", &["line 1", "`acc` appears twice"]),
    ok("csv/empty.csv", &["empty", "no header"]),
    ok("csv/header-only.csv", &["no rows"]),
    ok("csv/blank-lines-only.csv", &["no rows"]),
    ok("csv/invalid-utf8.csv", &["line 2", "field 3", "UTF-8"]),
    ok("csv/does-not-exist.csv", &["No such file"]),
    // IDX data sets (the named file is the one at fault).
    ok("idx/bad-magic", &["train-images-idx3-ubyte.gz", "bad magic number"]),
    ok("idx/empty-file", &["t10k-labels-idx1-ubyte", "empty file"]),
    ok("idx/wrong-element-type", &["train-images-idx3-ubyte.gz", "element type 0x0d"]),
    ok("idx/truncated-header", &["t10k-images-idx3-ubyte", "truncated IDX header", "3 dimensions"]),
    ok("idx/zero-dimensions", &["train-labels-idx1-ubyte.gz", "0 dimensions"]),
    ok("idx/truncated-data", &["train-images-idx3-ubyte.gz", "promises 320 bytes", "holds 100"]),
    ok("idx/trailing-data", &["train-images-idx3-ubyte.gz", "promises 320 bytes", "holds 330"]),
    ok("idx/huge-dimensions", &["train-images-idx3-ubyte.gz", "too large"]),
    ok("idx/images-wrong-dimension-count", &["train-images-idx3-ubyte.gz", "images need 3 dimensions", "[20, 16]"]),
    ok("idx/labels-wrong-dimension-count", &["train-labels-idx1-ubyte.gz", "labels need 1 dimension", "[20, 1]"]),
    ok("idx/gzip-truncated", &["train-images-idx3-ubyte.gz", "corrupt gzip"]),
    ok("idx/gzip-bad-crc", &["train-labels-idx1-ubyte.gz", "corrupt gzip", "checksum"]),
    ok("idx/label-count-mismatch", &["train-labels-idx1-ubyte.gz", "19 labels for 20 images"]),
    ok("idx/label-out-of-range", &["t10k-labels-idx1-ubyte", "label 12 out of range"]),
    ok("idx/test-resolution-mismatch", &["t10k-images-idx3-ubyte", "test images are 5×5", "training images 4×4"]),
    ok("idx/no-images", &["train-images-idx3-ubyte.gz", "no images"]),
    ok("idx/zero-size-images", &["t10k-images-idx3-ubyte", "0×4 pixels are empty"]),
    ok("idx/missing-labels", &["train-labels-idx1-ubyte", "missing"]),
];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// A table study over `table` (3 positions of `a`, `b`).
fn table_config(dir: &Path, table: &Path) -> PathBuf {
    let text = format!(
        "[study]\ntrials = 5\n[space]\nkind = \"sequence\"\nlength = 3\noptions = [\"a\", \"b\"]\n\
         [task]\nkind = \"table\"\nfile = {:?}\nsearch_column = \"acc\"\nreport_column = \"final\"\n\
         [strategy]\nkind = \"random\"\n",
        table.to_str().unwrap()
    );
    let p = dir.join("table-study.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A one-trial training study on the IDX files in `data_dir`.
fn idx_config(dir: &Path, data_dir: &Path) -> PathBuf {
    let text = format!(
        "[study]\ntrials = 1\nworkers = 1\n[space]\nkind = \"sequence\"\nlength = 2\noptions = [\"conv3x3\", \"identity\"]\n\
         [task]\nkind = \"train\"\ndataset = \"fashion-mnist\"\ndata_dir = {:?}\nvalid_fraction = 0.25\nthreads = 1\n\
         network = {{ kind = \"macro\", channels = 2 }}\nproxy = {{ epochs = 1 }}\n[strategy]\nkind = \"random\"\n",
        data_dir.to_str().unwrap()
    );
    let p = dir.join("idx-study.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// `corpus/idx/valid` with the files of `case` in place of their namesakes
/// (`NAME.missing` removes `NAME` and `NAME.gz`).
fn idx_data(dir: &Path, case: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for f in std::fs::read_dir(corpus().join("idx/valid")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, data.join(f.file_name().unwrap())).unwrap();
    }
    let mut replaced = 0;
    for f in std::fs::read_dir(case).unwrap() {
        let f = f.unwrap().path();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        let stem = name.trim_end_matches(".missing").trim_end_matches(".gz");
        for old in [stem.to_string(), format!("{stem}.gz")] {
            let _ = std::fs::remove_file(data.join(old));
        }
        if !name.ends_with(".missing") {
            std::fs::copy(&f, data.join(&name)).unwrap();
        }
        replaced += 1;
    }
    assert!(replaced > 0, "{}: an empty IDX case", case.display());
    data
}

/// What a run of the binary on one case gave.
struct Outcome {
    code: Option<i32>,
    stderr: String,
    /// The file whose name the error must carry.
    file: String,
}

/// Runs the binary on one case (configs from their own folder, so that
/// relative paths in them resolve the same for every reader), at most two
/// minutes.
fn run(case: &Case) -> Outcome {
    let d = tempfile::tempdir().unwrap();
    let fixture = corpus().join(case.fixture);
    let (config, file) = match case.fixture.split_once('/').unwrap().0 {
        "config" => (fixture.clone(), fixture.file_name().unwrap().to_str().unwrap().to_string()),
        "csv" => (table_config(d.path(), &fixture), fixture.file_name().unwrap().to_str().unwrap().to_string()),
        "idx" => (idx_config(d.path(), &idx_data(d.path(), &fixture)), String::new()),
        other => panic!("unknown fixture kind `{other}`"),
    };
    let mut child = bin()
        .args(["run", config.to_str().unwrap(), "--study", d.path().join("s.db").to_str().unwrap(), "--quiet"])
        .current_dir(fixture.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: still running after 120 s (the input was accepted?)", case.fixture);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    Outcome { code: out.status.code(), stderr: String::from_utf8_lossy(&out.stderr).into_owned(), file }
}

/// Non-zero exit, no panic, no signal.
fn failed_cleanly(case: &Case, o: &Outcome) -> Result<(), String> {
    match o.code {
        None => Err(format!("{}: killed by a signal\n{}", case.fixture, o.stderr)),
        Some(0) => Err(format!("{}: accepted (exit 0)\n{}", case.fixture, o.stderr)),
        Some(101) => Err(format!("{}: exit 101 (a panic)\n{}", case.fixture, o.stderr)),
        Some(_) if o.stderr.contains("panicked") => Err(format!("{}: panicked\n{}", case.fixture, o.stderr)),
        Some(_) => Ok(()),
    }
}

/// The error names the file and says what each expected substring says
/// (elsewhere than in the file's name: `wrong-type-space-length.toml` does
/// not name the key `length`).
fn names_what_it_should(case: &Case, o: &Outcome) -> Result<(), String> {
    let mut missing: Vec<&str> = Vec::new();
    if !o.file.is_empty() && !o.stderr.contains(&o.file) {
        missing.push(&o.file);
    }
    let rest = if o.file.is_empty() { o.stderr.clone() } else { o.stderr.replace(&o.file, "<…>") };
    missing.extend(case.expect.iter().copied().filter(|s| !rest.contains(s)));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: the error lacks {missing:?}:\n{}", case.fixture, o.stderr))
    }
}

/// Runs `check` on every case (a few binaries at a time: each spends about
/// half a second loading libtorch) and returns the problems, in table order.
fn check_all(cases: &[&Case], check: impl Fn(&Case, &Outcome) -> Result<(), String> + Sync) -> Vec<String> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut problems: Vec<(usize, String)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut found = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(case) = cases.get(i) else { break };
                        if let Err(e) = check(case, &run(case)) {
                            found.push((i, e));
                        }
                    }
                    found
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    problems.sort_by_key(|(i, _)| *i);
    problems.into_iter().map(|(_, e)| e).collect()
}

/// Every case fails cleanly and names what it should.
#[test]
fn every_malformed_input_is_refused_with_a_clear_error() {
    let cases: Vec<&Case> = CASES.iter().collect();
    let problems = check_all(&cases, |case, o| {
        failed_cleanly(case, o)?;
        names_what_it_should(case, o)
    });
    assert!(problems.is_empty(), "{} of {} cases:\n\n{}", problems.len(), CASES.len(), problems.join("\n\n"));
}

/// Every fixture file is used by a case, and every case's fixture exists
/// (but the one that tests a missing file).
#[test]
fn the_table_and_the_fixtures_agree() {
    let used: std::collections::BTreeSet<&str> = CASES.iter().map(|c| c.fixture).collect();
    for kind in ["config", "csv", "idx"] {
        for f in std::fs::read_dir(corpus().join(kind)).unwrap() {
            let name = format!("{kind}/{}", f.unwrap().file_name().to_str().unwrap());
            let helper = ["csv/valid.csv", "idx/valid", "idx/make_fixtures.py"].contains(&name.as_str());
            assert!(helper || used.contains(name.as_str()), "{name} is not in the table");
        }
    }
    for c in CASES {
        assert!(corpus().join(c.fixture).exists() || c.fixture == "csv/does-not-exist.csv", "{} does not exist", c.fixture);
        assert!(!c.expect.is_empty(), "{}: expects nothing", c.fixture);
    }
}
