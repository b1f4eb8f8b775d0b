//! The settings file's `limits` block: limits on downstream connections (header size and count,
//! header read time, request body idle time, open connections), with Envoy's defaults. `proxy::limits` enforces them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Envoy's `max_request_headers_kb` default: 60 KiB of request headers.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 60 * 1024;
/// Envoy's `max_headers_count` default.
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Time a client has to send a whole request head, and to start the next one on a kept-alive
/// connection (so it is the downstream idle timeout between requests too). hyper's default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a request body may go without a byte from the client: Envoy's `stream_idle_timeout`
/// default (408 before the answer started, the stream reset after).
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Open downstream connections at most; more are answered 503 and closed.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The `limits` block of the settings file; every field optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsFile {
    /// Request header bytes at most (431 beyond).
    pub max_header_bytes: Option<usize>,
    /// Request header lines at most (431 beyond).
    pub max_headers: Option<usize>,
    /// Time to send a request head, e.g. `10s` (408 beyond).
    pub header_read_timeout: Option<String>,
    /// Time a request body may stall, e.g. `5m` (408 beyond).
    pub stream_idle_timeout: Option<String>,
    /// Open downstream connections at most (503 beyond).
    pub max_connections: Option<usize>,
}

/// Resolved limits.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Request header bytes at most.
    pub max_header_bytes: usize,
    /// Request header lines at most.
    pub max_headers: usize,
    /// Time to send a request head.
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// Time a request body may stall.
    #[serde(with = "humantime_serde_compat")]
    pub stream_idle_timeout: Duration,
    /// Open downstream connections at most.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl LimitsFile {
    /// Fills defaults and parses durations.
    ///
    /// # Errors
    /// A duration that does not parse, or a zero limit.
    pub fn resolve(&self) -> Result<Limits, String> {
        let d = Limits::default();
        let duration = |text: &Option<String>, field: &str, default: Duration| match text {
            Some(text) => humantime::parse_duration(text).map_err(|e| format!("limits.{field}: {text:?}: {e}")),
            None => Ok(default),
        };
        let limits = Limits {
            max_header_bytes: self.max_header_bytes.unwrap_or(d.max_header_bytes),
            max_headers: self.max_headers.unwrap_or(d.max_headers),
            header_read_timeout: duration(&self.header_read_timeout, "headerReadTimeout", d.header_read_timeout)?,
            stream_idle_timeout: duration(&self.stream_idle_timeout, "streamIdleTimeout", d.stream_idle_timeout)?,
            max_connections: self.max_connections.unwrap_or(d.max_connections),
        };
        if limits.max_header_bytes == 0
            || limits.max_headers == 0
            || limits.max_connections == 0
            || limits.header_read_timeout.is_zero()
            || limits.stream_idle_timeout.is_zero()
        {
            return Err("limits: every limit must be above zero".into());
        }
        Ok(limits)
    }
}

/// Serializes durations as humantime text (`10s`) in the config dump.
mod humantime_serde_compat {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_default_to_envoys_and_parse_durations() {
        assert_eq!(LimitsFile::default().resolve().unwrap(), Limits::default());
        let file =
            LimitsFile { header_read_timeout: Some("750ms".into()), max_connections: Some(3), ..Default::default() };
        let limits = file.resolve().unwrap();
        assert_eq!(limits.header_read_timeout, Duration::from_millis(750));
        assert_eq!(limits.max_connections, 3);
        assert!(LimitsFile { header_read_timeout: Some("soon".into()), ..Default::default() }.resolve().is_err());
        let idle = LimitsFile { stream_idle_timeout: Some("2s".into()), ..Default::default() }.resolve().unwrap();
        assert_eq!(idle.stream_idle_timeout, Duration::from_secs(2));
        let error = LimitsFile { stream_idle_timeout: Some("0s".into()), ..Default::default() }.resolve().unwrap_err();
        assert!(error.contains("above zero"), "{error}");
        assert!(LimitsFile { max_connections: Some(0), ..Default::default() }.resolve().is_err());
    }
}
