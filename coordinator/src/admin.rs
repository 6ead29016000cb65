//! The admin listener's HTTP surface: the JSON API (`api`) and the SRE
//! console (`web::console`) as one route table behind the authentication
//! gate (`auth::gate`), with a span per request when the coordinator
//! traces. Assembled here, above both, so neither needs the other.

use crate::api::{self, ApiError, ApiState};
use crate::auth::{self, ApiRouter, Gate, RouteSpec};
use crate::web::console;
use axum::Router;

/// Every admin route with what it needs: the one table [`router`] serves
/// and [`route_table`] lists.
pub fn routes() -> ApiRouter<ApiState> {
    api::routes().merge(console::routes())
}

/// Every route with its method and access (what the route-table test walks).
pub fn route_table() -> Vec<RouteSpec> {
    routes().table().to_vec()
}

/// The admin routes behind the authentication gate; a console page refused
/// for want of a session gets the sign-in form instead of JSON.
pub fn router(state: ApiState) -> Router {
    let gate = Gate {
        tokens: state.control.tokens(),
        hub: state.hub.clone(),
        storage: state.storage.clone(),
    };
    routes()
        .into_router()
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(gate, auth::gate))
        .layer(axum::middleware::from_fn(console::sign_in_first))
        .layer(axum::middleware::from_fn_with_state(state.traces.clone(), api::traced))
        .with_state(state)
}
