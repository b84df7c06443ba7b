//! `archsearch report` and `archsearch dashboard`: the data tables of
//! deterministic studies are snapshot-tested (insta); the pages are loaded in
//! headless Chromium (the Debian package), which must log no console error
//! and render a screenshot that is not blank; the dashboard shows a trial
//! told after the page opened, without a reload.

mod common;
use common::{bin, run_ok};

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Log::LogEntryLevel;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption;
use headless_chrome::{Browser, LaunchOptions, Tab};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Runs the config `text` into `DIR/NAME.db`.
fn study(dir: &Path, name: &str, text: &str) -> PathBuf {
    let config = write(dir, &format!("{name}.toml"), text);
    let db = dir.join(format!("{name}.db"));
    run_ok(&["run", config.to_str().unwrap(), "--study", db.to_str().unwrap(), "--quiet"]);
    db
}

/// Writes the report of `input` to `out` and returns its data tables as text.
fn report(input: &Path, out: &Path) -> String {
    let text = run_ok(&["report", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--tables"]);
    let (first, tables) = text.split_once('\n').unwrap();
    assert!(first.starts_with(&format!("wrote {}", out.display())), "{first}");
    tables.trim_start().to_string()
}

const EVOLUTION: &str = "[study]\nname = \"rea\"\nseed = 0\ntrials = 40\n[task]\nkind = \"nb201\"\n\
                         [strategy]\nkind = \"evolution\"\npopulation = 10\nsample = 3\n";

const HYPERBAND: &str = "[study]\nname = \"hb\"\nseed = 11\ncost = 2000\ntrials = 1000000\n\
                         [task]\nkind = \"nb201\"\nsearch_column = \"c10valid_valid200\"\ncost_per_step = 1.0\n\
                         [strategy]\nkind = \"hyperband\"\nmin_budget = 12\nmax_budget = 200\neta = 16.666666666666668\n";

const PROXY: &str = "[study]\nname = \"proxy\"\nseed = 4\n[task]\nkind = \"nb201\"\n\
                     [check]\narchitectures = 300\ntop_fraction = 0.1\n\
                     [[check.pairs]]\nname = \"valid12\"\nproxy = \"c10valid_valid12\"\ntarget = \"c10_test200\"\nproxy_cost = 12\ntarget_cost = 200\n";

/// The reports of one study of each deterministic kind (and of a bench),
/// with their tables: the HTML files and the text.
fn deterministic_reports(dir: &Path) -> Vec<(&'static str, PathBuf, String)> {
    let mut out = Vec::new();
    for (name, config) in [("rea", EVOLUTION), ("hb", HYPERBAND)] {
        let db = study(dir, name, config);
        let html = dir.join(format!("{name}.html"));
        let tables = report(&db, &html);
        out.push((name, html, tables));
    }
    let check = write(dir, "proxy.toml", PROXY);
    let db = dir.join("proxy.db");
    run_ok(&["proxy-check", check.to_str().unwrap(), "--study", db.to_str().unwrap()]);
    let html = dir.join("proxy.html");
    let tables = report(&db, &html);
    out.push(("proxy", html, tables));
    let bench = run_ok(&["bench", "--strategies", "random,evolution", "--budget", "60", "--seeds", "8", "--json"]);
    let results = write(dir, "bench.jsonl", &bench);
    let html = dir.join("bench.html");
    let tables = report(&results, &html);
    out.push(("bench", html, tables));
    out
}

#[test]
fn report_tables_of_deterministic_studies_match_their_snapshots() {
    let d = tempfile::tempdir().unwrap();
    for (name, html, tables) in deterministic_reports(d.path()) {
        // Self-contained: nothing is fetched (the only URL is SVG's namespace).
        let page = std::fs::read_to_string(&html).unwrap().replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(page.contains("<svg") && !page.contains("http") && !page.contains("src="), "{name}: not self-contained");
        insta::assert_snapshot!(name, tables);
    }
}

fn browser() -> Browser {
    let options = LaunchOptions::default_builder()
        .path(Some(PathBuf::from("/usr/bin/chromium")))
        .sandbox(false)
        .window_size(Some((1400, 1000)))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    Browser::new(options).expect("headless Chromium (Debian package `chromium`; .ci/run installs it)")
}

/// Opens `url` in a new tab that records console errors, uncaught
/// exceptions and error log entries (failed loads among them).
fn open(browser: &Browser, url: &str) -> (Arc<Tab>, Arc<Mutex<Vec<String>>>) {
    let tab = browser.new_tab().unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    tab.add_event_listener(Arc::new(move |event: &Event| {
        let error = match event {
            Event::RuntimeExceptionThrown(e) => Some(format!("{e:?}")),
            Event::RuntimeConsoleAPICalled(e) if e.params.Type == ConsoleAPICalledEventTypeOption::Error => Some(format!("{e:?}")),
            Event::LogEntryAdded(e) if e.params.entry.level == LogEntryLevel::Error => Some(format!("{e:?}")),
            _ => None,
        };
        if let Some(e) = error {
            sink.lock().unwrap().push(e);
        }
    }))
    .unwrap();
    tab.enable_runtime().unwrap();
    tab.enable_log().unwrap();
    tab.navigate_to(url).unwrap();
    tab.wait_until_navigated().unwrap();
    (tab, errors)
}

/// Whether a PNG has content: many pixels unlike its background, in several colours.
fn not_blank(png_bytes: &[u8]) -> bool {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let background = pixels[0];
    let differing = pixels.iter().filter(|p| **p != background).count();
    let colours: std::collections::HashSet<&[u8]> = pixels.iter().copied().collect();
    differing * 20 > pixels.len() && colours.len() > 16
}

fn text_of(tab: &Tab, js: &str) -> String {
    let v = tab.evaluate(js, false).unwrap().value.unwrap_or_default();
    v.as_str().map(String::from).unwrap_or_else(|| v.to_string())
}

#[test]
fn reports_load_in_chromium_without_console_errors_and_render() {
    let d = tempfile::tempdir().unwrap();
    let mut pages = deterministic_reports(d.path()).into_iter().map(|(n, html, _)| (n, html)).collect::<Vec<_>>();
    // A population-based training study (real training, a few seconds).
    let pbt = study(
        d.path(),
        "pbt",
        "[study]\nname = \"pbt\"\nseed = 2\nworkers = 2\n[space]\nkind = \"sequence\"\nlength = 3\n\
         options = [\"conv3x3\", \"sep3x3\", \"maxpool3x3\", \"identity\"]\n\
         [task]\nkind = \"train\"\ndataset = \"fashion-mnist\"\nvalid_fraction = 0.02\n\
         network = { kind = \"macro\", channels = 4, stem_stride = 2 }\noptimizer = { optimizer = \"adam\", lr = 0.01 }\n\
         proxy = { fraction = 0.03 }\n\
         [strategy]\nkind = \"pbt\"\nvariant = \"pbt-nas\"\npopulation = 4\ninterval = 1\nepochs = 3\nbottom = 0.5\ntop = 0.5\nmix_probability = 0.5\n",
    );
    let html = d.path().join("pbt.html");
    let tables = report(&pbt, &html);
    assert!(tables.contains("## Population-based training") && tables.contains("### Lineage edges"), "{tables}");
    pages.push(("pbt", html));
    let browser = browser();
    // The watch itself: a page with a console error, an exception and a
    // missing image is caught on all three counts.
    let broken = write(d.path(), "broken.html", "<img src=\"missing.png\"><script>console.error('e'); undefined_function();</script>");
    let (_, errors) = open(&browser, &format!("file://{}", broken.display()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(errors.lock().unwrap().len(), 3, "{:?}", errors.lock().unwrap());
    // A blank page is blank.
    let blank = write(d.path(), "blank.html", "<html><body></body></html>");
    let (tab, _) = open(&browser, &format!("file://{}", blank.display()));
    assert!(!not_blank(&tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap()));
    for (name, html) in pages {
        let (tab, errors) = open(&browser, &format!("file://{}", html.display()));
        let svgs: usize = text_of(&tab, "String(document.querySelectorAll('figure svg').length)").parse().unwrap();
        assert!(svgs >= 1, "{name}: no plot in the page");
        let shot = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
        assert!(not_blank(&shot), "{name}: the screenshot is blank");
        std::thread::sleep(Duration::from_millis(300));
        assert!(errors.lock().unwrap().is_empty(), "{name}: console errors {:?}", errors.lock().unwrap());
    }
}

#[test]
fn the_dashboard_shows_a_trial_told_after_the_page_opened_without_a_reload() {
    let d = tempfile::tempdir().unwrap();
    let config = |trials: u64| EVOLUTION.replace("trials = 40", &format!("trials = {trials}"));
    let db = study(d.path(), "live", &config(5));
    let mut server =
        Server(bin().args(["dashboard", db.to_str().unwrap(), "--port", "0"]).stdout(std::process::Stdio::piped()).spawn().unwrap());
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://127.0.0.1:")).unwrap_or_else(|| panic!("no URL in `{line}`"));
    let browser = browser();
    let (tab, errors) = open(&browser, url);
    let trials_row = "Array.from(document.querySelectorAll('tr')).map(r => r.textContent).find(t => t.startsWith('trials')) || ''";
    assert!(text_of(&tab, trials_row).contains("5 (5 COMPLETE)"), "{}", text_of(&tab, trials_row));
    tab.evaluate("window.probe = 'same page'", false).unwrap();
    // Another process tells a sixth trial.
    study(d.path(), "live", &config(6));
    let start = Instant::now();
    while !text_of(&tab, trials_row).contains("6 (6 COMPLETE)") {
        assert!(start.elapsed() < Duration::from_secs(30), "the page never showed the sixth trial: {}", text_of(&tab, trials_row));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(text_of(&tab, "window.probe"), "same page", "the page was reloaded");
    assert!(text_of(&tab, "document.getElementById('updated').textContent").starts_with("updated "));
    assert!(errors.lock().unwrap().is_empty(), "console errors {:?}", errors.lock().unwrap());
    // A request naming another host (DNS rebinding) is refused.
    let status = |host: &str| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(url.trim_start_matches("http://").trim_end_matches('/')).unwrap();
        write!(s, "GET /fragment HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    };
    assert!(status("evil.example:8080").contains("403"), "{}", status("evil.example:8080"));
    assert!(status("localhost:8080").contains("200"), "{}", status("localhost:8080"));
}

/// A dashboard process, stopped when the test ends (passed or not).
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
