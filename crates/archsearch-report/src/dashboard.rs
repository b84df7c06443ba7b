//! A live dashboard: a small HTTP server (axum) that serves a study store's
//! report and refreshes it while workers run.
//!
//! `GET /` is the report page with the live script; `GET /fragment` is its
//! body, built afresh from the store on every request. The store is opened
//! read-only for each request, so the dashboard never changes a study and
//! never holds a lock that workers wait on. It binds to 127.0.0.1 unless told
//! otherwise, and there answers only requests for a loopback host name.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::get;
use axum::Router;

use crate::{page, sections_html, store_sections, ReportError, Section};

/// A dashboard bound to its port, not yet serving.
pub struct Dashboard {
    listener: std::net::TcpListener,
    source: Source,
}

#[derive(Clone)]
struct Source {
    url: String,
    name: Option<String>,
}

impl Source {
    fn read(&self) -> Result<(String, Vec<Section>), ReportError> {
        let store = archsearch_store::open_read_only(&self.url)?;
        store_sections(store.as_ref(), self.name.as_deref())
    }
}

/// An error as a page: the message, escaped, with status 500 (the live page
/// keeps what it showed and tries again).
fn failure(e: ReportError) -> (StatusCode, Html<String>) {
    (StatusCode::INTERNAL_SERVER_ERROR, Html(format!("<p class=\"empty\">{}</p>", crate::html::escape(&e.to_string()))))
}

impl Dashboard {
    /// Binds `addr` for the store at `url` (the study `name`, or every
    /// study); fails now if the store or the study cannot be read.
    pub fn bind(url: &str, name: Option<&str>, addr: SocketAddr) -> Result<Self, ReportError> {
        let source = Source { url: url.to_string(), name: name.map(String::from) };
        source.read()?;
        let listener = std::net::TcpListener::bind(addr).map_err(|e| ReportError::Serve(format!("binding {addr}: {e}")))?;
        Ok(Dashboard { listener, source })
    }

    /// The address it listens on (the port, when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, ReportError> {
        self.listener.local_addr().map_err(|e| ReportError::Serve(e.to_string()))
    }

    /// Serves until the process ends.
    pub fn serve(self) -> Result<(), ReportError> {
        let err = |e: std::io::Error| ReportError::Serve(e.to_string());
        self.listener.set_nonblocking(true).map_err(err)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(err)?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener).map_err(err)?;
            let mut app = Router::new().route("/", get(index)).route("/fragment", get(fragment)).with_state(self.source);
            if listener.local_addr().map_err(err)?.ip().is_loopback() {
                app = app.layer(axum::middleware::from_fn(local_only));
            }
            axum::serve(listener, app).await.map_err(err)
        })
    }
}

/// On a loopback address, only requests naming a loopback host: a web page
/// elsewhere cannot read the report through DNS rebinding.
async fn local_only(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let host = request.headers().get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    if matches!(name, "localhost" | "127.0.0.1" | "[::1]") {
        next.run(request).await
    } else {
        (StatusCode::FORBIDDEN, "the dashboard answers requests for localhost only").into_response()
    }
}

async fn index(State(source): State<Source>) -> Result<Html<String>, (StatusCode, Html<String>)> {
    let (title, sections) = read(source).await?;
    Ok(Html(page(&title, &sections, Some("/fragment"))))
}

async fn fragment(State(source): State<Source>) -> Result<Html<String>, (StatusCode, Html<String>)> {
    let (_, sections) = read(source).await?;
    Ok(Html(sections_html(&sections)))
}

/// Reads the store off the async thread (SQLite and plotting block).
async fn read(source: Source) -> Result<(String, Vec<Section>), (StatusCode, Html<String>)> {
    tokio::task::spawn_blocking(move || source.read())
        .await
        .map_err(|e| failure(ReportError::Serve(format!("report thread: {e}"))))?
        .map_err(failure)
}
