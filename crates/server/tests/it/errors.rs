//! Every kind of bad input gets the contract's error body with the right status, code and field,
//! and changes nothing in the database.

use axum::http::{Method, StatusCode};

use crate::{ALL, Backend, TestApp, Transport};

struct Case {
    name: &'static str,
    method: Method,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<String>,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
}

fn case(name: &'static str, method: Method, path: &'static str, body: Option<&str>) -> Case {
    Case {
        name,
        method,
        path,
        headers: &[],
        body: body.map(str::to_owned),
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "invalid_field",
        field: None,
    }
}

impl Case {
    fn expect(
        mut self,
        status: StatusCode,
        code: &'static str,
        field: Option<&'static str>,
    ) -> Case {
        (self.status, self.code, self.field) = (status, code, field);
        self
    }

    fn headers(mut self, headers: &'static [(&'static str, &'static str)]) -> Case {
        self.headers = headers;
        self
    }
}

/// The table. `{id}` in a path is an existing post.
fn cases() -> Vec<Case> {
    use Method as M;
    use StatusCode as S;
    let long_title = format!(
        r#"{{"author_id":"a","title":"{}","body":"b"}}"#,
        "t".repeat(201)
    );
    let huge = format!(
        r#"{{"author_id":"a","title":"t","body":"{}"}}"#,
        "b".repeat(300 * 1024)
    );
    let mut long = case("over-long title", M::POST, "/v1/posts", None).expect(
        S::UNPROCESSABLE_ENTITY,
        "invalid_field",
        Some("title"),
    );
    long.body = Some(long_title);
    let mut too_big = case("body over the limit", M::POST, "/v1/posts", None).expect(
        S::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        None,
    );
    too_big.body = Some(huge);
    vec![
        case(
            "malformed JSON",
            M::POST,
            "/v1/posts",
            Some("{\"author_id\":"),
        )
        .expect(S::BAD_REQUEST, "malformed_json", None),
        case("not an object", M::POST, "/v1/posts", Some("[1,2]")).expect(
            S::UNPROCESSABLE_ENTITY,
            "invalid_field",
            None,
        ),
        case(
            "trailing garbage",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":"t","body":"b"} x"#),
        )
        .expect(S::BAD_REQUEST, "malformed_json", None),
        case(
            "wrong type",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":5,"body":"b"}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("title")),
        case(
            "wrong type in a list",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":"t","body":"b","tags":["x",3]}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("tags[1]")),
        case(
            "missing field",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":"t"}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("body")),
        case(
            "unknown field",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":"t","body":"b","admin":true}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("admin")),
        case(
            "empty title",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":"  ","body":"b"}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("title")),
        case(
            "empty author",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"","title":"t","body":"b"}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("author_id")),
        case(
            "bad tag",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":"t","body":"b","tags":["Has Space"]}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("tags[0]")),
        long,
        too_big,
        case(
            "wrong content type",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"a","title":"t","body":"b"}"#),
        )
        .headers(&[("content-type", "text/plain")])
        .expect(
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("content-type"),
        ),
        case("empty patch", M::PATCH, "/v1/posts/{id}", Some("{}")).expect(
            S::UNPROCESSABLE_ENTITY,
            "invalid_field",
            None,
        ),
        case(
            "patch with unknown field",
            M::PATCH,
            "/v1/posts/{id}",
            Some(r#"{"version":9}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("version")),
        case(
            "patch with a stale If-Match",
            M::PATCH,
            "/v1/posts/{id}",
            Some(r#"{"title":"x"}"#),
        )
        .headers(&[("if-match", "\"7\"")])
        .expect(
            S::PRECONDITION_FAILED,
            "precondition_failed",
            Some("if-match"),
        ),
        case(
            "patch with a garbled If-Match",
            M::PATCH,
            "/v1/posts/{id}",
            Some(r#"{"title":"x"}"#),
        )
        .headers(&[("if-match", "seven")])
        .expect(
            S::PRECONDITION_FAILED,
            "precondition_failed",
            Some("if-match"),
        ),
        case(
            "delete with a stale If-Match",
            M::DELETE,
            "/v1/posts/{id}",
            None,
        )
        .headers(&[("if-match", "\"7\"")])
        .expect(
            S::PRECONDITION_FAILED,
            "precondition_failed",
            Some("if-match"),
        ),
        case("bad id", M::GET, "/v1/posts/abc", None).expect(
            S::BAD_REQUEST,
            "bad_request",
            Some("id"),
        ),
        case("zero id", M::PATCH, "/v1/posts/0", Some(r#"{"title":"x"}"#)).expect(
            S::BAD_REQUEST,
            "bad_request",
            Some("id"),
        ),
        case(
            "absent id",
            M::PATCH,
            "/v1/posts/987654",
            Some(r#"{"title":"x"}"#),
        )
        .expect(S::NOT_FOUND, "not_found", None),
        case("bad cursor", M::GET, "/v1/posts?cursor=nonsense", None).expect(
            S::BAD_REQUEST,
            "bad_request",
            Some("cursor"),
        ),
        case("limit too big", M::GET, "/v1/posts?limit=101", None).expect(
            S::BAD_REQUEST,
            "bad_request",
            Some("limit"),
        ),
        case("limit zero", M::GET, "/v1/posts?limit=0", None).expect(
            S::BAD_REQUEST,
            "bad_request",
            Some("limit"),
        ),
        case(
            "unknown query parameter",
            M::GET,
            "/v1/posts?sort=asc",
            None,
        )
        .expect(S::BAD_REQUEST, "bad_request", Some("sort")),
        case("bad tag filter", M::GET, "/v1/posts?tag=NO%20WAY", None).expect(
            S::BAD_REQUEST,
            "bad_request",
            Some("tag"),
        ),
        case("unknown route", M::GET, "/v2/everything", None).expect(
            S::NOT_FOUND,
            "not_found",
            None,
        ),
        case("wrong method", M::PUT, "/v1/posts/{id}", Some("{}")).expect(
            S::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
        ),
        case(
            "invalidate nothing",
            M::POST,
            "/v1/cache/invalidate",
            Some("{}"),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", None),
        case(
            "invalidate a bad tag",
            M::POST,
            "/v1/cache/invalidate",
            Some(r#"{"tags":["everything"]}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("tags[0]")),
        case(
            "a NUL in a title (PostgreSQL refuses it in text)",
            M::POST,
            "/v1/posts",
            Some(r#"{"author_id":"ann","title":"a\u0000b","body":"b"}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("title")),
        case(
            "a NUL in a patched body",
            M::PATCH,
            "/v1/posts/{id}",
            Some(r#"{"body":"x\u0000y"}"#),
        )
        .expect(S::UNPROCESSABLE_ENTITY, "invalid_field", Some("body")),
        case("views of a bad id", M::POST, "/v1/posts/x/views", None).expect(
            S::BAD_REQUEST,
            "bad_request",
            Some("id"),
        ),
    ]
}

async fn bad_input_is_rejected_and_changes_nothing(backend: Backend, transport: Transport) {
    let app = TestApp::start(backend, transport).await;
    let id = app.create("ann", "untouched", &["keep"]).await;
    let before = app.fingerprint().await;
    for case in cases() {
        let path = case.path.replace("{id}", &id);
        let reply = app
            .send(
                case.method.clone(),
                &path,
                case.headers,
                case.body.as_deref(),
            )
            .await;
        assert_eq!(
            reply.status, case.status,
            "{} ({backend:?}, {transport:?}): {:?}",
            case.name, reply.body
        );
        let (code, field) = reply.error();
        assert_eq!(code, case.code, "{}", case.name);
        assert_eq!(field.as_deref(), case.field, "{}", case.name);
        assert_eq!(
            app.fingerprint().await,
            before,
            "{} changed the database",
            case.name
        );
    }
    let post = app.get(&format!("/v1/posts/{id}")).await.json();
    assert_eq!(
        (post["title"].as_str(), post["version"].as_i64()),
        (Some("untouched"), Some(1))
    );
}

#[tokio::test]
async fn bad_input_is_rejected_and_changes_nothing_everywhere() {
    for (backend, transport) in ALL {
        bad_input_is_rejected_and_changes_nothing(backend, transport).await;
    }
}
