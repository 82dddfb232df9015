//! `/metrics` in the Prometheus text format: everything recorded through the `metrics`
//! facade, plus build information and process figures read from `/proc` at scrape time.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::AppState;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder once per process and returns its handle (None when
/// another recorder was installed first, e.g. by an embedding application).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new().install_recorder().ok()?;
            metrics::gauge!(
                "warden_build_info",
                "version" => crate::VERSION,
                "revision" => crate::GIT_REVISION,
                "profile" => crate::BUILD_PROFILE
            )
            .set(1.0);
            Some(handle)
        })
        .clone()
}

pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(render))
}

async fn render(State(app): State<AppState>) -> impl IntoResponse {
    let mut body = app.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    body.push_str(&process_metrics());
    body.push_str(&server_metrics(&app));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Per-server figures, read from the directory at scrape time (so they can never drift
/// from what `/admin/servers` shows).
fn server_metrics(app: &AppState) -> String {
    use std::fmt::Write as _;
    use warden_actors::directory::ServerState;
    let mut up = String::from("# TYPE warden_server_up gauge\n");
    let mut restarts = String::from("# TYPE warden_server_restarts_total counter\n");
    let mut states = String::from("# TYPE warden_server_state gauge\n");
    let mut in_flight = String::from("# TYPE warden_server_calls_in_flight gauge\n");
    let mut queued = String::from("# TYPE warden_server_calls_queued gauge\n");
    for entry in app.tree.directory.all().iter() {
        let status = entry.shared().status();
        let users = entry.user_instances();
        // A per-user server is up when any of its instances is.
        let is_up = status.state == ServerState::Ready
            || users.iter().any(|i| i.status().state == ServerState::Ready);
        let name = escape(&entry.name);
        let total_restarts =
            status.restarts + users.iter().map(|i| i.status().restarts).sum::<u64>();
        let _ = writeln!(
            up,
            "warden_server_up{{server=\"{name}\"}} {}",
            u8::from(is_up)
        );
        let _ = writeln!(
            restarts,
            "warden_server_restarts_total{{server=\"{name}\"}} {total_restarts}"
        );
        for state in ServerState::ALL {
            let value = u8::from(status.state == state);
            let _ = writeln!(
                states,
                "warden_server_state{{server=\"{name}\",state=\"{}\"}} {value}",
                state.as_str()
            );
        }
        let _ = writeln!(
            in_flight,
            "warden_server_calls_in_flight{{server=\"{name}\"}} {}",
            entry.limiter.in_flight()
        );
        let _ = writeln!(
            queued,
            "warden_server_calls_queued{{server=\"{name}\"}} {}",
            entry.limiter.waiting()
        );
    }
    let _ = writeln!(
        up,
        "# TYPE warden_sessions gauge\nwarden_sessions {}",
        app.gateway.sessions.table.len()
    );
    [up, restarts, states, in_flight, queued].concat()
}

/// Escapes a label value for the Prometheus text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The standard `process_*` metrics, read from `/proc/self`.
fn process_metrics() -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..])
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the command name, 0-based: utime 11, stime 12, starttime 19, rss 21.
        let num = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let ticks = ticks.max(1) as f64;
        let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
        let _ = writeln!(
            out,
            "process_cpu_seconds_total {}",
            (num(11) + num(12)) / ticks
        );
        let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            num(21) * page as f64
        );
        if let Some(boot) = boot_time() {
            let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
            let _ = writeln!(out, "process_start_time_seconds {}", boot + num(19) / ticks);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let _ = writeln!(out, "# TYPE process_open_fds gauge");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    out
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}
