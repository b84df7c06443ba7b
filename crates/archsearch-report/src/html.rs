//! HTML output: a self-contained page (inline CSS, inline SVG, no external
//! resources) and the body fragment a live dashboard re-fetches.
//!
//! Every piece of text that comes from data (study names, architectures,
//! errors, table cells) is escaped. Each section is a `<section>` with its
//! plots, then its tables, each inside a `<details>` (open when the section
//! has no plots, as the summary) carrying a `data-key` so that a live page
//! keeps the tables a reader opened across refreshes.

use std::fmt::Write as _;

use crate::{Section, Table};

/// `text` with `& < > " '` escaped, safe in element content and in quoted
/// attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "\
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#222;background:#fafafa}\
header{display:flex;align-items:baseline;gap:1em;padding:.8em 1.5em;background:#fff;border-bottom:1px solid #ddd}\
header h1{font-size:1.3em;margin:0}\
#updated{color:#888;font-size:.85em}\
main{padding:0 1.5em 2em}\
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;margin:1.2em 0;padding:.6em 1.2em 1em}\
section h2{font-size:1.1em;margin:.4em 0 .8em}\
.plots{display:flex;flex-wrap:wrap;gap:12px}\
figure{margin:0;border:1px solid #eee}\
figure svg{display:block;max-width:100%;height:auto}\
details{margin:.6em 0}\
summary{cursor:pointer;color:#335;font-size:.92em}\
.table{max-height:28em;overflow:auto;margin-top:.4em}\
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}\
th,td{border-bottom:1px solid #eee;padding:.2em .7em;text-align:left;white-space:nowrap}\
th{position:sticky;top:0;background:#f4f4f4}\
p.empty{color:#888}";

/// The script of a live page: fetches `url` every 2 s, swaps the answer in
/// when it changed (keeping which tables are open), and shows the time of
/// the last successful fetch. A failed fetch (server down) is ignored and
/// retried.
fn live_script(url: &str) -> String {
    // A JSON string is a JS string literal; `</` must not close the script.
    let url = serde_json::to_string(url).unwrap_or_else(|_| "\"\"".into()).replace("</", "<\\/");
    format!(
        r#"<script>
(function () {{
  var url = {url};
  var main = document.getElementById("report");
  var label = document.getElementById("updated");
  var last = null;
  function two(n) {{ return (n < 10 ? "0" : "") + n; }}
  function stamp() {{
    var d = new Date();
    label.textContent = "updated " + two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
  }}
  function swap(html) {{
    if (html === last) {{ return; }}
    var open = {{}};
    main.querySelectorAll("details[data-key]").forEach(function (d) {{ open[d.getAttribute("data-key")] = d.open; }});
    main.innerHTML = html;
    main.querySelectorAll("details[data-key]").forEach(function (d) {{
      var k = d.getAttribute("data-key");
      if (Object.prototype.hasOwnProperty.call(open, k)) {{ d.open = open[k]; }}
    }});
    last = html;
  }}
  function refresh() {{
    fetch(url, {{ cache: "no-store" }})
      .then(function (r) {{ if (!r.ok) {{ throw new Error("HTTP " + r.status); }} return r.text(); }})
      .then(function (html) {{ swap(html); stamp(); }})
      .catch(function () {{}})
      .then(function () {{ setTimeout(refresh, 2000); }});
  }}
  stamp();
  setTimeout(refresh, 2000);
}})();
</script>
"#
    )
}

/// A self-contained HTML page; `live` adds a script that re-fetches
/// `GET {live}` (an HTML fragment: the same [`sections_html`] output) every
/// 2 s and swaps it into the page (for the dashboard).
pub fn page(title: &str, sections: &[Section], live: Option<&str>) -> String {
    let title = escape(title);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"icon\" href=\"data:,\">\n<title>{title}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><h1>{title}</h1><span id=\"updated\"></span></header>\n<main id=\"report\">\n"
    );
    out.push_str(&sections_html(sections));
    out.push_str("</main>\n");
    if let Some(url) = live {
        out.push_str(&live_script(url));
    }
    out.push_str("</body>\n</html>\n");
    out
}

/// The body fragment of a report: one `<section>` per section (also what
/// the dashboard serves at its fragment URL).
pub fn sections_html(sections: &[Section]) -> String {
    let mut out = String::new();
    if sections.is_empty() {
        out.push_str("<p class=\"empty\">Nothing to report yet.</p>\n");
    }
    for s in sections {
        let _ = writeln!(out, "<section>\n<h2>{}</h2>", escape(&s.title));
        if !s.plots.is_empty() {
            out.push_str("<div class=\"plots\">\n");
            for p in &s.plots {
                // The SVG comes from plotters, which escapes its text.
                let _ = writeln!(out, "<figure title=\"{}\">\n{}</figure>", escape(&p.title), p.svg);
            }
            out.push_str("</div>\n");
        }
        for t in &s.tables {
            let key = escape(&format!("{}/{}", s.title, t.title));
            let open = if s.plots.is_empty() { " open" } else { "" };
            let rows = t.rows.len();
            let _ = writeln!(
                out,
                "<details data-key=\"{key}\"{open}><summary>{} ({rows} row{})</summary>",
                escape(&t.title),
                if rows == 1 { "" } else { "s" }
            );
            table_html(&mut out, t);
            out.push_str("</details>\n");
        }
        out.push_str("</section>\n");
    }
    out
}

/// Rows of a table shown in a page (a study of 100,000 trials keeps its
/// page small; `tables_text` has every row).
const PAGE_ROWS: usize = 1_000;

fn table_html(out: &mut String, t: &Table) {
    out.push_str("<div class=\"table\"><table>\n<thead><tr>");
    for c in &t.columns {
        let _ = write!(out, "<th>{}</th>", escape(c));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in t.rows.iter().take(PAGE_ROWS) {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    if t.rows.len() > PAGE_ROWS {
        let more = t.rows.len() - PAGE_ROWS;
        let _ = writeln!(
            out,
            "<tr><td colspan=\"{}\">… and {more} more rows (`archsearch report --tables` prints them all)</td></tr>",
            t.columns.len().max(1)
        );
    }
    out.push_str("</tbody>\n</table></div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Plot;

    fn section(title: &str, plots: usize) -> Section {
        Section {
            title: title.into(),
            plots: (0..plots).map(|i| Plot { title: format!("p{i}"), svg: "<svg></svg>\n".into() }).collect(),
            tables: vec![Table { title: "t".into(), columns: vec!["a<b".into()], rows: vec![vec!["x&y".into()]] }],
        }
    }

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(escape("<script>alert('x')</script> & \"q\""), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;");
    }

    #[test]
    fn pages_are_self_contained_and_escaped() {
        let html = page("<script>bad()</script>", &[section("<b>s</b>", 1), section("summary", 0)], None);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(!html.contains("<script>"), "no script in a static page, and the title is escaped");
        assert!(html.contains("&lt;script&gt;bad()&lt;/script&gt;"));
        assert!(html.contains("<h2>&lt;b&gt;s&lt;/b&gt;</h2>"));
        assert!(html.contains("<th>a&lt;b</th>") && html.contains("<td>x&amp;y</td>"));
        assert!(html.contains("<details data-key=\"summary/t\" open>"), "a section without plots shows its tables");
        assert!(html.contains("<details data-key=\"&lt;b&gt;s&lt;/b&gt;/t\">"));
        for external in ["http://", "https://", "<link", "<img", "@import", "src="] {
            // The SVG namespace names no resource; the empty data-URL icon
            // keeps browsers from asking for /favicon.ico.
            let without_svg_ns =
                html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "").replace("<link rel=\"icon\" href=\"data:,\">", "");
            assert!(!without_svg_ns.contains(external), "{external}");
        }
    }

    #[test]
    fn long_tables_show_their_first_rows_in_a_page() {
        let t = Table { title: "t".into(), columns: vec!["n".into()], rows: (0..1_500).map(|i| vec![i.to_string()]).collect() };
        let s = Section { title: "s".into(), plots: vec![], tables: vec![t] };
        let html = sections_html(std::slice::from_ref(&s));
        assert!(html.contains("<td>999</td>") && !html.contains("<td>1000</td>"));
        assert!(html.contains("and 500 more rows") && html.contains("(1500 rows)"));
        assert!(crate::tables_text(&[s]).contains("\n1499\n"), "the text tables keep every row");
    }

    #[test]
    fn live_pages_poll_the_fragment() {
        let html = page("s", &[section("a", 1)], Some("/study/x</script>/fragment"));
        assert_eq!(html.matches("<script>").count(), 1);
        assert!(html.contains("var url = \"/study/x<\\/script>/fragment\";"));
        assert!(html.contains("setTimeout(refresh, 2000)") && html.contains(".catch(function () {})"));
        assert!(html.contains("<main id=\"report\">\n") && html.contains("id=\"updated\""));
        assert!(sections_html(&[]).contains("Nothing to report yet"));
    }
}
