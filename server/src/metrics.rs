//! Prometheus metrics (`/metrics`): signalling connections, relayed frames, refusals by reason, commits by result, the runtime's live tasks. Counts only, never ids.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A label set of one `reason` or `result`.
type Labels = Vec<(&'static str, &'static str)>;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open signalling connections.
    pub connections: Gauge,
    /// Signal and commit frames relayed to a device.
    pub frames_relayed: Counter,
    /// Refused frames and connections, by reason.
    refusals: Family<Labels, Counter>,
    /// Commits proposed to the sequencer, by result.
    commits: Family<Labels, Counter>,
    /// The runtime's live tasks (connections, their writers, timers), taken at each scrape.
    tasks: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tessera");
        let connections = Gauge::default();
        let frames_relayed = Counter::default();
        let refusals = Family::<Labels, Counter>::default();
        let commits = Family::<Labels, Counter>::default();
        let tasks = Gauge::default();
        registry.register(
            "runtime_tasks",
            "Live tasks of the server's runtime (flat when nothing leaks)",
            tasks.clone(),
        );
        registry.register(
            "ws_connections",
            "Open signalling connections",
            connections.clone(),
        );
        registry.register(
            "ws_frames_relayed",
            "Signal and commit frames relayed to a device",
            frames_relayed.clone(),
        );
        registry.register(
            "ws_refusals",
            "Refused signalling frames and connections, by reason",
            refusals.clone(),
        );
        registry.register(
            "commits",
            "Commits proposed to the sequencer, by result",
            commits.clone(),
        );
        Metrics {
            registry,
            connections,
            frames_relayed,
            refusals,
            commits,
            tasks,
        }
    }
}

impl Metrics {
    /// Counts a refusal.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts a commit proposal.
    pub fn commit(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.commits.get_or_create(&vec![("result", result)]).inc();
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}
