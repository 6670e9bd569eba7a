//! `GET /openapi.json`: the OpenAPI 3.1 description of every route wick serves, generated from
//! the handlers' `#[utoipa::path]` attributes and the wire types' `ToSchema` derives, so it
//! follows the code. Every operation also gets the error answers any route may give (the
//! OpenAI envelope, [`ErrorBody`]) and, unless it is a probe, the bearer-key security scheme.
//!
//! Adding a route: annotate its handler with `#[utoipa::path(...)]` and list it in [`ApiDoc`].

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Spec, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::routes;

/// One server-sent event of a streamed answer, as a client parses it: its `data` (a JSON chunk,
/// an error envelope, or `[DONE]`) and, for errors, its `event` name. Only the OpenAPI schema
/// of the `text/event-stream` answers: the stream itself is written by `sse`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseEvent {
    pub data: String,
    pub event: Option<String>,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "wick", description = "An OpenAI-compatible inference server for open-weight language models."),
    paths(
        routes::chat::handler,
        routes::completions::handler,
        routes::embeddings::handler,
        routes::models::list,
        routes::models::get,
        routes::responses::create,
        routes::responses::get,
        routes::responses::delete,
        routes::responses::input_items,
        routes::ui::page,
        routes::tokenize::tokenize,
        routes::tokenize::detokenize,
        routes::health::health,
        routes::health::ready,
        routes::health::metrics,
        spec,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Errors),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// Error statuses any route may answer, with when.
const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Invalid request: malformed JSON, or a missing, unknown, ill-typed or out-of-range field (`param` names it)",
    ),
    ("401", "Missing or wrong API key (when the server has keys)"),
    ("404", "Unknown route, model or response id"),
    ("405", "Method not allowed on this route"),
    ("408", "The request body did not arrive in time"),
    ("413", "The request body is over the limit"),
    ("415", "The body is not `application/json`"),
    ("429", "Too many requests waiting; retry after `Retry-After` seconds"),
    ("500", "Internal error"),
    (
        "503",
        "The model is loading, cannot fit the memory budget now, or the server is shutting down; retry after \
         `Retry-After` seconds",
    ),
];

struct Errors;

impl Modify for Errors {
    fn modify(&self, api: &mut Spec) {
        api.components
            .get_or_insert_with(Default::default)
            .security_schemes
            .insert("bearer".into(), SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        for item in api.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.post, &mut item.delete].into_iter().flatten() {
                add_errors(op);
            }
        }
    }
}

fn add_errors(op: &mut Operation) {
    for (status, description) in ERRORS {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        let resp = ResponseBuilder::new().description(*description).content("application/json", content).build();
        op.responses.responses.entry((*status).to_owned()).or_insert(resp.into());
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "wick",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn spec() -> Json<Spec> {
    Json(ApiDoc::openapi())
}
