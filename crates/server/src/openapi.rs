//! What every operation of the OpenAPI document shares, added in one place rather than repeated
//! on each route: the bearer scheme on the calls that need a token, the answers any call may get
//! (429 from the per-client limit, 503 from a deadline or an unavailable database; 400, 413, 415
//! and 422 for a JSON body), the headers of the answers (`ETag`, `Location`, `X-PostCache-Token`,
//! `X-PostCache-Tier`, `Retry-After`) and the form of a post id. Applied to the document the
//! routes built (the derive's own document has no paths yet).

use utoipa::Modify;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Components, Header, OpenApi, RefOr};

use crate::limit::UNLIMITED;

/// The name of the bearer scheme in `components.securitySchemes`.
const BEARER: &str = "bearer";

/// A post id as the API writes it: a positive 64-bit integer, no leading zero.
const POST_ID: &str = "^[1-9][0-9]{0,18}$";

pub(crate) struct Shared;

impl Modify for Shared {
    fn modify(&self, openapi: &mut OpenApi) {
        openapi
            .components
            .get_or_insert_with(Components::new)
            .add_security_scheme(
                BEARER,
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        for (path, item) in &mut openapi.paths.paths {
            let methods = [
                ("GET", &mut item.get),
                ("POST", &mut item.post),
                ("PATCH", &mut item.patch),
                ("DELETE", &mut item.delete),
            ];
            for (method, operation) in methods {
                if let Some(operation) = operation {
                    shared(path, method, operation);
                }
            }
        }
    }
}

fn shared(path: &str, method: &str, operation: &mut Operation) {
    let writes = method != "GET" && path != "/v1/posts/{id}/views";
    if writes {
        operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
        error(operation, "401", "No or a wrong bearer token");
    }
    if operation.request_body.is_some() {
        error(operation, "400", "The body is not JSON");
        error(operation, "413", "The body is too large");
        error(operation, "415", "The body is not `application/json`");
        error(operation, "422", "A field is invalid (`field` names it)");
    }
    if !UNLIMITED.contains(&path) {
        retry(operation, "429", "Over the per-client rate limit");
    }
    retry(
        operation,
        "503",
        "Unavailable: the database, a deadline, or starting/draining",
    );
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter
            && parameter.name == "id"
            && parameter.parameter_in == ParameterIn::Path
        {
            parameter.schema = Some(string_schema(Some(POST_ID)));
        }
    }
    let headers: &[(&str, &str, &str)] = match (method, path) {
        ("GET", "/v1/posts/{id}") => &[("200", "etag", ETAG), ("200", "x-postcache-tier", TIER)],
        ("GET", "/v1/posts") => &[("200", "x-postcache-tier", TIER)],
        ("POST", "/v1/posts") => &[
            ("201", "location", "The new post's URL"),
            ("201", "etag", ETAG),
            ("201", "x-postcache-token", TOKEN),
        ],
        ("PATCH", "/v1/posts/{id}") => {
            &[("200", "etag", ETAG), ("200", "x-postcache-token", TOKEN)]
        }
        ("DELETE", "/v1/posts/{id}") => &[("204", "x-postcache-token", TOKEN)],
        _ => &[],
    };
    for (status, name, description) in headers {
        if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) {
            response
                .headers
                .insert((*name).to_owned(), RefOr::T(header(description)));
        }
    }
}

const ETAG: &str = "The post's version, quoted (`\"3\"`): send it as `If-None-Match` or `If-Match`";
const TIER: &str = "Which tier answered: `l1`, `l2` or `l3`";
const TOKEN: &str =
    "Consistency token: send it back (header or the `pc_token` cookie) to read your writes";

/// Adds an error answer with the shared body, unless the route documents that status itself.
fn error(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::T(error_response(description)));
}

/// [`error`], with `Retry-After`.
fn retry(operation: &mut Operation, status: &str, description: &str) {
    error(operation, status, description);
    if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(status) {
        response.headers.insert(
            "retry-after".to_owned(),
            RefOr::T(header("Seconds to wait before retrying")),
        );
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            utoipa::openapi::content::Content::new(Some(RefOr::Ref(
                utoipa::openapi::Ref::from_schema_name("ErrorBody"),
            ))),
        )
        .build()
}

fn header(description: &str) -> Header {
    let mut header = Header::new(string_schema(None));
    header.description = Some(description.to_owned());
    header
}

fn string_schema(pattern: Option<&str>) -> RefOr<utoipa::openapi::schema::Schema> {
    RefOr::T(
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(pattern)
            .into(),
    )
}
