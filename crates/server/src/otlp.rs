//! The HTTP client the OTLP exporter posts spans with: `ureq` (blocking, as the exporter's own
//! thread wants), TLS by rustls with ring. An `https://` collector is verified against Mozilla's
//! roots built into the binary (the image has no CA bundle), or only against the certificates of
//! a CA file when one is given (a private CA).

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// Longest an export may take, connection and answer included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest collector answer read.
const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the OTLP CA file {path}: {reason}")]
pub struct CaFileError {
    path: String,
    reason: String,
}

/// A blocking OTLP/HTTP client.
#[derive(Debug)]
pub(crate) struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// Trusting the built-in public roots, or only `ca_file`'s certificates.
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<Client, CaFileError> {
        let roots = match ca_file {
            None => RootCerts::WebPki,
            Some(path) => {
                let error = |reason: String| CaFileError {
                    path: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
                let certs = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<Vec<Certificate<'static>>, _>>()
                    .map_err(|e| error(e.to_string()))?;
                if certs.is_empty() {
                    return Err(error("it holds no certificate".into()));
                }
                RootCerts::new_with_certs(&certs)
            }
        };
        let agent = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            .timeout_global(Some(EXPORT_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(Client { agent })
    }
}

#[async_trait]
impl HttpClient for Client {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // Called on the exporter's own thread: blocking here holds up nothing else.
        let (parts, body) = request.into_parts();
        let response = self.agent.run(Request::from_parts(parts, body.to_vec()))?;
        let (parts, mut body) = response.into_parts();
        let answer = body.with_config().limit(MAX_ANSWER_BYTES).read_to_vec()?;
        Ok(Response::from_parts(parts, Bytes::from(answer)))
    }
}
