//! Logging: `RUST_LOG`-style filtering to the terminal (or JSON with `--log-json`), and every
//! stage's own events, plugins' included, into its `log.jsonl`.
use std::collections::HashMap;
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::Id;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

// Line-buffered, so that a running stage's log can be followed as it is written.
type LogFile = Arc<Mutex<LineWriter<File>>>;

/// Open stage logs by the id of the stage's span.
fn stage_logs() -> &'static Mutex<HashMap<u64, LogFile>> {
    static LOGS: OnceLock<Mutex<HashMap<u64, LogFile>>> = OnceLock::new();
    LOGS.get_or_init(Default::default)
}

/// While the guard lives, events inside `span` (on any plugin) also go to `path`.
pub struct StageLogGuard(Option<u64>);

pub fn open_stage_log(span: &tracing::Span, path: &Path) -> std::io::Result<StageLogGuard> {
    let file = Arc::new(Mutex::new(LineWriter::new(File::create(path)?)));
    let id = span.id().map(|id| id.into_u64());
    if let Some(id) = id {
        lock(stage_logs()).insert(id, file);
    }
    Ok(StageLogGuard(id))
}

impl Drop for StageLogGuard {
    fn drop(&mut self) {
        if let Some(file) = self.0.and_then(|id| lock(stage_logs()).remove(&id)) {
            lock(&file).flush().ok();
        }
    }
}

/// A poisoned lock only means another thread panicked while logging; the data is lines.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct StageLogLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for StageLogLayer {
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else { return };
        let logs = lock(stage_logs());
        let Some(file) = scope.into_iter().find_map(|span| logs.get(&span.id().into_u64()).cloned()) else {
            return;
        };
        drop(logs);
        let mut fields = JsonFields(serde_json::Map::new());
        event.record(&mut fields);
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let line = serde_json::json!({
            "ts": ts,
            "level": event.metadata().level().as_str(),
            "target": event.metadata().target(),
            "fields": fields.0,
        });
        let mut file = lock(&file);
        writeln!(file, "{line}").ok();
    }

    fn on_close(&self, id: Id, _ctx: Context<'_, S>) {
        if let Some(file) = lock(stage_logs()).remove(&id.into_u64()) {
            lock(&file).flush().ok();
        }
    }
}

struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_string(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }
}

/// Writes to stderr, pausing the live progress display (if any) so lines do not tear it.
#[derive(Clone, Copy)]
pub struct TerminalWriter;

pub struct TerminalLine(Vec<u8>);

impl Write for TerminalLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TerminalLine {
    fn drop(&mut self) {
        let bytes = std::mem::take(&mut self.0);
        crate::execute::progress::suspend(|| std::io::stderr().write_all(&bytes).ok());
    }
}

impl<'a> MakeWriter<'a> for TerminalWriter {
    type Writer = TerminalLine;
    fn make_writer(&'a self) -> Self::Writer {
        TerminalLine(Vec::new())
    }
}

/// Installs the process-wide subscriber; `RUST_LOG` filters the terminal (default `info`; while
/// the live display shows the run, `warn`: its progress lines say what INFO lines would, and
/// each stage's `log.jsonl` keeps them).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let asked = std::env::var_os("RUST_LOG").is_some();
    let under_display = tracing_subscriber::filter::filter_fn(move |meta| {
        asked
            || !meta.is_event()
            || *meta.level() <= tracing::Level::WARN
            || !crate::execute::progress::live()
    });
    let terminal = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        tracing_subscriber::fmt::layer()
            .with_writer(TerminalWriter)
            .with_ansi(ansi)
            .with_target(false)
            .with_filter(filter)
            .with_filter(under_display)
            .boxed()
    };
    tracing_subscriber::registry().with(terminal).with(StageLogLayer.with_filter(LevelFilter::INFO)).init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_log_has_each_line_while_the_stage_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let subscriber = tracing_subscriber::registry().with(StageLogLayer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("stage");
            let _guard = open_stage_log(&span, &path).unwrap();
            span.in_scope(|| tracing::info!(step = 360, "evaluated on dev"));
            tracing::info!("outside the stage");
            let text = std::fs::read_to_string(&path).unwrap();
            let lines: Vec<serde_json::Value> =
                text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            assert_eq!(lines.len(), 1, "{text}");
            assert_eq!(lines[0]["fields"]["message"], "evaluated on dev");
            assert_eq!(lines[0]["fields"]["step"], 360);
        });
    }
}
