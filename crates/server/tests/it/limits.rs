//! Authentication and rate limiting.

use std::num::NonZeroU32;

use axum::http::{Method, StatusCode};
use postcache_server::{Auth, RateLimit};

use crate::{Backend, TestApp, Transport};

const NEW_POST: &str = r#"{"author_id":"ann","title":"t","body":"b"}"#;

#[tokio::test]
async fn writes_need_a_valid_bearer_token_when_tokens_are_configured() {
    for transport in [Transport::InProcess, Transport::Socket] {
        let app = TestApp::with(
            Backend::Sqlite,
            transport,
            Auth::new(["s3cret-token".to_owned()]),
            None,
        )
        .await;
        let before = app.fingerprint().await;
        for headers in [
            &[][..],
            &[("authorization", "Bearer wrong")],
            &[("authorization", "s3cret-token")],
        ] {
            let reply = app
                .send(Method::POST, "/v1/posts", headers, Some(NEW_POST))
                .await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{headers:?}");
            assert_eq!(
                reply.error(),
                ("unauthorized".to_owned(), Some("authorization".to_owned()))
            );
        }
        let admin = app
            .post("/v1/cache/invalidate", r#"{"tags":["feed:global"]}"#)
            .await;
        assert_eq!(admin.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            app.fingerprint().await,
            before,
            "rejected writes change nothing"
        );

        let auth = [("authorization", "Bearer s3cret-token")];
        let created = app
            .send(Method::POST, "/v1/posts", &auth, Some(NEW_POST))
            .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let id = created.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(
            app.get(&format!("/v1/posts/{id}")).await.status,
            StatusCode::OK,
            "reads stay open"
        );
        let delete = app
            .send(Method::DELETE, &format!("/v1/posts/{id}"), &[], None)
            .await;
        assert_eq!(delete.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    for transport in [Transport::InProcess, Transport::Socket] {
        let limit = RateLimit::new(NonZeroU32::new(1).unwrap(), NonZeroU32::new(5).unwrap());
        let app = TestApp::with(Backend::Sqlite, transport, Auth::default(), Some(limit)).await;
        for _ in 0..5 {
            assert_eq!(app.get("/v1/posts").await.status, StatusCode::OK);
        }
        let limited = app.get("/v1/posts").await;
        assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.error().0, "rate_limited");
        let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        // The same address flooding: probes and the scrape still answer (one abuser behind a
        // proxy must not take the pod out of its Service or out of Prometheus's sight).
        for path in ["/healthz", "/readyz", "/metrics"] {
            for _ in 0..20 {
                assert_eq!(app.get(path).await.status, StatusCode::OK, "{path}");
            }
        }
        assert_eq!(
            app.get("/v1/posts").await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        // Refusals are counted like every answer, under their route: a flood shows on the
        // dashboards and in the error-rate alert.
        let metrics = String::from_utf8(app.get("/metrics").await.body.to_vec()).unwrap();
        let refused = metrics
            .lines()
            .find(|l| {
                l.starts_with("postcache_http_requests_total{")
                    && l.contains(r#"route="/v1/posts""#)
                    && l.contains(r#"status="429""#)
            })
            .unwrap_or_else(|| panic!("no 429 counted: {metrics}"));
        let count: f64 = refused.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 2.0, "{refused}");
    }
}

/// A page on an allowed origin gets its preflight answered before authentication and may read the
/// headers read-your-writes needs; another origin gets no CORS headers; without origins, none.
#[tokio::test]
async fn browser_pages_of_allowed_origins_may_call_the_api_and_read_its_headers() {
    let app = TestApp::with_options(
        Backend::Sqlite,
        Transport::InProcess,
        crate::Options {
            auth: Auth::new(["s3cret-token".to_owned()]),
            cors_origins: vec!["https://app.example.com".to_owned()],
            ..crate::Options::default()
        },
    )
    .await;
    let preflight = |origin: &'static str| {
        [
            ("origin", origin),
            ("access-control-request-method", "PATCH"),
            (
                "access-control-request-headers",
                "authorization,content-type,if-match,x-postcache-token",
            ),
        ]
    };
    let allowed = app
        .send(
            Method::OPTIONS,
            "/v1/posts/x",
            &preflight("https://app.example.com"),
            None,
        )
        .await;
    assert_eq!(
        allowed.status,
        StatusCode::OK,
        "no token needed for a preflight"
    );
    let header = |reply: &crate::Reply, name: &str| {
        reply
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    let methods = header(&allowed, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("patch") && methods.contains("delete"),
        "{methods}"
    );
    let headers = header(&allowed, "access-control-allow-headers").unwrap();
    for name in ["authorization", "if-match", "x-postcache-token"] {
        assert!(headers.contains(name), "{headers}");
    }

    let created = app
        .send(
            Method::POST,
            "/v1/posts",
            &[
                ("origin", "https://app.example.com"),
                ("authorization", "Bearer s3cret-token"),
            ],
            Some(NEW_POST),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let exposed = header(&created, "access-control-expose-headers").unwrap();
    for name in ["etag", "location", "x-postcache-token", "retry-after"] {
        assert!(exposed.contains(name), "{exposed}");
    }

    let other = app
        .send(
            Method::OPTIONS,
            "/v1/posts/x",
            &preflight("https://evil.example"),
            None,
        )
        .await;
    assert!(header(&other, "access-control-allow-origin").is_none());
    let plain = TestApp::start(Backend::Sqlite, Transport::InProcess).await;
    let reply = plain
        .send(
            Method::GET,
            "/v1/posts",
            &[("origin", "https://app.example.com")],
            None,
        )
        .await;
    assert!(header(&reply, "access-control-allow-origin").is_none());
}
