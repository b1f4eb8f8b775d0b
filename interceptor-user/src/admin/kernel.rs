//! The kernel programs' counters as Prometheus metrics, read from the pinned maps at every scrape
//! (the kernel keeps counting; there is nothing to cache or sync).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

use crate::bpf::{CaptureCounters, CaptureStats};

/// Collector over the counter maps pinned in the agent's bpffs directory.
#[derive(Debug)]
pub struct KernelCollector {
    counters: CaptureCounters,
}

impl KernelCollector {
    /// Reads `counters` at every scrape.
    pub fn new(counters: CaptureCounters) -> Self {
        Self { counters }
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match self.counters.read() {
            Ok(stats) => stats,
            Err(err) => {
                // A scrape must not fail the whole page; the proxy's own metrics still count.
                tracing::warn!(%err, "reading the kernel counters for /stats/prometheus");
                return Ok(());
            }
        };
        encode_stats(&stats, &mut encoder)
    }
}

/// Writes `stats` as `interceptor_capture_connections_total{service}` and
/// `interceptor_program_{events,captured,bypassed,errors}_total{program}`.
pub(crate) fn encode_stats(stats: &CaptureStats, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "interceptor_capture_connections",
        "Connections the kernel redirected to the proxy, per service VIP:port (pinned SERVICE_STATS)",
        None,
        MetricType::Counter,
    )?;
    for (service, connections) in &stats.services {
        let labels = [("service", service.to_string())];
        ConstCounter::new(*connections).encode(family.encode_family(&labels)?)?;
    }
    type Field = fn(&crate::bpf::ProgramStats) -> u64;
    let fields: [(&str, &str, Field); 4] = [
        ("interceptor_program_events", "Times each kernel program ran", |s| s.events),
        (
            "interceptor_program_captured",
            "Connections redirected or handed over; for sk_msg, sends moved into the local peer",
            |s| s.captured,
        ),
        (
            "interceptor_program_bypassed",
            "Captured destinations left alone (not ready, proxy's own); for sk_msg, sends through TCP",
            |s| s.bypassed,
        ),
        ("interceptor_program_errors", "Kernel program failures (fail open)", |s| s.errors),
    ];
    for (name, help, field) in fields {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (program, counters) in &stats.programs {
            let labels = [("program", program.name())];
            ConstCounter::new(field(counters)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}
