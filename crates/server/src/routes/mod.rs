//! The HTTP routes, grouped by what they serve. Each handler carries its OpenAPI description, and
//! the router and `/openapi.json` are built from the same list, so they cannot disagree.

pub(crate) mod admin;
pub(crate) mod demo;
pub(crate) mod health;
pub(crate) mod posts;
mod response;
