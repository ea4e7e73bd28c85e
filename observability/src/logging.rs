//! How the `consortia` commands write their log: human-readable text (the default) or
//! one JSON object per line for a log pipeline (`--log-format json`, or
//! `[observability] log_format = "json"` in the coordinator's and the agent's
//! configuration files).
//!
//! A JSON line carries the event's fields flattened beside these stable keys:
//!
//! | key | meaning |
//! |-----|---------|
//! | `timestamp` | RFC 3339, UTC |
//! | `level` | `TRACE` … `ERROR` |
//! | `target` | the Rust module that logged it |
//! | `message` | the human-readable sentence (the text format's line) |
//! | `round` | the round concerned, where there is one |
//! | `partner` | the partner concerned, where there is one |
//! | `phase` | the protocol phase: the coordinator's `phase` metric label (`standardisation`, `key_ceremony`, `collection`, `decryption`), or the agent's ([`crate::progress::AgentPhase`]) |
//! | `reason` | on every refusal: the code the metrics use as their `reason` label |
//!
//! Refusal codes are one source of truth: the enums of the refusals
//! (`HandshakeRefusal::code`, the coordinator's `SessionRefusal::code` and
//! `Rejection::code`, `DeclineKind::code`) give both the metric label and the log
//! field. A human-readable explanation that is not a code goes in `detail`.
//!
//! Log events are written around the progress line ([`crate::progress`]) when one is
//! drawn on a terminal: the line is erased, the event written, the line drawn again.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// How log events are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, fields flattened (see the module documentation).
    Json,
}

impl LogFormat {
    /// The name used on the command line and in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format name other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLogFormat(pub String);

impl fmt::Display for UnknownLogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown log format `{}`: use `text` (for people) or `json` (one object per line)",
            self.0
        )
    }
}

impl std::error::Error for UnknownLogFormat {}

impl FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_string())),
        }
    }
}

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Everything to standard error (the coordinator and the other commands).
    Stderr,
    /// A partner agent: INFO and below to standard output, warnings and errors to
    /// standard error, so that an operator can follow one and alert on the other.
    Split,
}

/// Installs the process's log subscriber: `format`, to `streams`, filtered by
/// `RUST_LOG` (`info` by default). Does nothing when a subscriber is already
/// installed.
pub fn init(format: LogFormat, streams: Streams) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = format == LogFormat::Text
        && match streams {
            Streams::Stderr => std::io::IsTerminal::is_terminal(&std::io::stderr()),
            Streams::Split => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        };
    let writer = AroundProgress(
        std::io::stderr
            .with_max_level(tracing::Level::WARN)
            .or_else(match streams {
                Streams::Stderr => Out::Stderr,
                Streams::Split => Out::Stdout,
            }),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(true)
            .try_init(),
    };
}

/// Standard output or standard error, chosen at set-up.
#[derive(Debug, Clone, Copy)]
enum Out {
    Stdout,
    Stderr,
}

impl<'a> MakeWriter<'a> for Out {
    type Writer = Box<dyn io::Write + 'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            // Not locked here: the progress line takes its own lock first.
            Out::Stdout => Box::new(io::stdout()),
            Out::Stderr => Box::new(io::stderr()),
        }
    }
}

/// Makes writers that erase the progress line before an event and draw it again after.
struct AroundProgress<M>(M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for AroundProgress<M> {
    type Writer = Around<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Around(self.0.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        Around(self.0.make_writer_for(meta))
    }
}

/// A writer of one event, written around the progress line.
struct Around<W>(W);

impl<W: io::Write> io::Write for Around<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::progress::around(|| self.0.write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        crate::progress::around(|| self.0.write_all(buf).and_then(|()| self.0.flush()))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_name_only() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        let e = "JSON ".parse::<LogFormat>().unwrap_err().to_string();
        assert!(e.contains("`JSON `") && e.contains("json"), "{e}");
        assert_eq!(LogFormat::default(), LogFormat::Text);
        assert_eq!(LogFormat::Json.to_string(), "json");
    }
}
