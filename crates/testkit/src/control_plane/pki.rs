//! The control plane's certificates, made with Debian's `openssl`: a CA, the apiserver's serving
//! certificate (127.0.0.1 as an IP SAN, which rustls insists on), an admin client certificate in
//! `system:masters`, the aggregation layer's front-proxy client certificate, and the
//! service-account signing key.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The common name of the front-proxy client certificate: the only one allowed to assert an
/// identity in the aggregation layer's request headers.
pub(super) const FRONT_PROXY_CN: &str = "front-proxy-client";

/// Paths of the generated files.
pub(super) struct Pki {
    pub(super) ca_cert: PathBuf,
    pub(super) ca_key: PathBuf,
    pub(super) serving_cert: PathBuf,
    pub(super) serving_key: PathBuf,
    pub(super) admin_cert: PathBuf,
    pub(super) admin_key: PathBuf,
    pub(super) front_proxy_cert: PathBuf,
    pub(super) front_proxy_key: PathBuf,
    pub(super) sa_key: PathBuf,
    pub(super) sa_pub: PathBuf,
}

impl Pki {
    /// Generates every file under `dir`.
    pub(super) fn generate(dir: &Path) -> Result<Pki, String> {
        let p = |name: &str| dir.join(name);
        let pki = Pki {
            ca_cert: p("ca.crt"),
            ca_key: p("ca.key"),
            serving_cert: p("apiserver.crt"),
            serving_key: p("apiserver.key"),
            admin_cert: p("admin.crt"),
            admin_key: p("admin.key"),
            front_proxy_cert: p("front-proxy-client.crt"),
            front_proxy_key: p("front-proxy-client.key"),
            sa_key: p("sa.key"),
            sa_pub: p("sa.pub"),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=postcache-test-ca",
            "-keyout",
            s(&pki.ca_key),
            "-out",
            s(&pki.ca_cert),
        ])?;
        pki.sign(
            "/CN=kube-apiserver",
            &[
                "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
                "extendedKeyUsage=serverAuth",
            ],
            &pki.serving_key,
            &pki.serving_cert,
        )?;
        pki.sign(
            "/O=system:masters/CN=admin",
            &["extendedKeyUsage=clientAuth"],
            &pki.admin_key,
            &pki.admin_cert,
        )?;
        pki.sign(
            &format!("/CN={FRONT_PROXY_CN}"),
            &["extendedKeyUsage=clientAuth"],
            &pki.front_proxy_key,
            &pki.front_proxy_cert,
        )?;
        openssl(&["genrsa", "-out", s(&pki.sa_key), "2048"])?;
        openssl(&[
            "rsa",
            "-in",
            s(&pki.sa_key),
            "-pubout",
            "-out",
            s(&pki.sa_pub),
        ])?;
        Ok(pki)
    }

    /// Issues a certificate signed by the CA. Every certificate carries extensions, which makes it
    /// X.509 v3: rustls (webpki) rejects v1 certificates.
    fn sign(
        &self,
        subject: &str,
        extensions: &[&str],
        key: &Path,
        cert: &Path,
    ) -> Result<(), String> {
        let csr = cert.with_extension("csr");
        let mut req = vec![
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            subject,
            "-keyout",
            s(key),
            "-out",
            s(&csr),
        ];
        req.extend(["-addext", "basicConstraints=critical,CA:FALSE"]);
        req.extend([
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment",
        ]);
        for extension in extensions {
            req.extend(["-addext", extension]);
        }
        openssl(&req)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            s(&csr),
            "-CA",
            s(&self.ca_cert),
            "-CAkey",
            s(&self.ca_key),
            "-CAcreateserial",
            "-days",
            "30",
            "-copy_extensions",
            "copyall",
            "-out",
            s(cert),
        ])
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

fn openssl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
