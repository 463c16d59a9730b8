//! Request metrics: every response counted by route (the matched path pattern, never the
//! raw path: one series per job id would grow without end), method and status code.
//! `batchd serve` layers [`count_requests`] over its whole router.

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Responses by `route`, `method` and `status`.
pub const API_REQUESTS: &str = "batchd_api_requests_total";

/// The middleware: counts the response once it is made (auth refusals included).
pub async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let response = next.run(request).await;
    metrics::counter!(
        API_REQUESTS,
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// The standard methods by name; anything else is one label, so a client cannot make series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
