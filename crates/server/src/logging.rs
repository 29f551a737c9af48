//! Logs and traces: text or JSON lines on stderr, filtered by `RUST_LOG` (default `info`), and,
//! when an OTLP endpoint is configured, every span exported over OTLP/HTTP (protobuf).
//!
//! Spans carry the method, path and request id, never headers: those carry bearer tokens.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the trace exporter alive; dropping it flushes and stops it.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at exit failed");
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built from the endpoint.
    #[error("cannot set up the OTLP trace exporter")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
    /// The collector's CA file is unusable.
    #[error(transparent)]
    CaFile(#[from] crate::otlp::CaFileError),
}

/// Installs the global subscriber (call once, at start-up). `otlp_endpoint` is the collector's
/// base URL (e.g. `https://otel-collector:4318`); spans go to `{endpoint}/v1/traces`, over TLS
/// verified against the public roots, or only `otlp_ca_file`'s certificates when given.
///
/// # Errors
/// When the exporter cannot be built from the endpoint, or the CA file is unusable.
pub fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    otlp_ca_file: Option<&std::path::Path>,
) -> Result<Telemetry, TelemetryError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(crate::otlp::Client::new(otlp_ca_file)?)
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
                .map_err(TelemetryError::Exporter)?;
            let resource = Resource::builder().with_service_name("postcache").build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("postcache"))
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}
